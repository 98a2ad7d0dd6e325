#!/usr/bin/env python3
"""Capture RESP transcripts from a real redis-server (dev tool, see README.md).

Usage: python3 capture.py [--redis-server PATH] [--only NAME ...]

For every scenario below it starts a private redis-server on a free loopback port
(`--save '' --appendonly no`), opens the scenario's client connections, sends the raw
bytes of each step, waits until the server has been quiet for a while, and records what
every connection received, one RESP frame per line. The files are written next to this
script as NAME.txt. Nothing here needs network access beyond 127.0.0.1.
"""
import argparse
import os
import re
import select
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUIET_S = 0.15      # a step is over once no connection received anything for this long
STEP_MAX_S = 5.0    # ... or after this long in total


# ---------------------------------------------------------------- RESP helpers

def cmd(*args):
    """A command as a RESP array of bulk strings."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def frame_end(b, i=0):
    """Index just past the RESP2/RESP3 frame starting at b[i], or None if incomplete."""
    if i >= len(b):
        return None
    j = b.find(b"\r\n", i)
    if j < 0:
        return None
    t, line, k = b[i:i + 1], b[i + 1:j], j + 2
    if t in b"+-:_,#(":
        return k
    if t in b"$=!":
        n = int(line)
        if n < 0:
            return k
        return k + n + 2 if len(b) >= k + n + 2 else None
    if t in b"*~>%|":
        n = int(line)
        if n < 0:
            return k
        if t in b"%|":
            n *= 2
        for _ in range(n):
            k = frame_end(b, k)
            if k is None:
                return None
        return k
    raise ValueError("not RESP: %r" % b[i:i + 40])


def split_frames(b):
    frames, i = [], 0
    while i < len(b):
        e = frame_end(b, i)
        if e is None:
            raise ValueError("partial frame at end of step: %r" % b[i:i + 80])
        frames.append(b[i:e])
        i = e
    return frames


def escape(b):
    """Transcript escaping: printable ASCII as is, except backslash and '{'."""
    out = []
    for x in b:
        c = chr(x)
        if c == "\\":
            out.append("\\\\")
        elif c == "\r":
            out.append("\\r")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "{" or x < 0x20 or x > 0x7e:
            out.append("\\x%02x" % x)
        else:
            out.append(c)
    s = "".join(out)
    if s.endswith(" "):
        s = s[:-1] + "\\x20"
    if s.startswith(" "):
        s = "\\x20" + s[1:]
    return s


HELLO_ID = re.compile(rb"(\$2\r\nid\r\n:)\d+(\r\n)")


def mask(frame, mask_int):
    """Replace values that differ from run to run by the placeholder {ID}."""
    frame = HELLO_ID.sub(rb"\1{ID}\2", frame)
    if mask_int and re.fullmatch(rb":\d+\r\n", frame):
        frame = b":{ID}\r\n"
    return frame


def escape_masked(frame):
    return escape(frame).replace("\\x7bID}", "{ID}")


# ---------------------------------------------------------------- scenario DSL

class Send:
    def __init__(self, client, data, unordered=False, elements_unordered=False,
                 mask_int=False, repeat=1):
        self.client, self.data, self.repeat = client, data, repeat
        self.unordered, self.elements_unordered, self.mask_int = (
            unordered, elements_unordered, mask_int)


def send(client, *args, **kw):
    return Send(client, cmd(*args), **kw)


def raw(client, data, **kw):
    return Send(client, data, **kw)


class Sleep:
    def __init__(self, ms):
        self.ms = ms


class Kill:
    def __init__(self, client):
        self.client = client


class Restart:
    pass


class Scenario:
    def __init__(self, name, about, steps, requirepass=None, users=()):
        self.name, self.about, self.steps = name, about, steps
        self.requirepass, self.users = requirepass, list(users)


# ---------------------------------------------------------------- server control

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, binary, sc):
        self.binary, self.sc = binary, sc
        self.port = free_port()
        self.proc = None
        self.admin = None

    def start(self):
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.sc.requirepass is not None:
            args += ["--requirepass", self.sc.requirepass]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                self.admin = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        if self.sc.requirepass is not None:
            self.admin_cmd("AUTH", self.sc.requirepass)
        for user, pw in self.sc.users:
            self.admin_cmd("ACL", "SETUSER", user, "on", ">" + pw, "~*", "&*", "+@all")

    def admin_cmd(self, *args):
        self.admin.sendall(cmd(*args))
        buf = b""
        while True:
            buf += self.admin.recv(65536)
            if frame_end(buf) is not None:
                break
        if buf.startswith(b"-"):
            raise RuntimeError("admin command %r failed: %r" % (args, buf))
        return buf

    def stop(self):
        if self.proc is not None:
            try:
                self.admin.sendall(cmd("SHUTDOWN", "NOSAVE"))
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------- capture

def run(binary, sc):
    server = Server(binary, sc)
    server.start()
    socks = {}      # client number -> socket (open ones)
    lines = ["# " + l for l in sc.about.strip().splitlines()]
    lines.append("# Captured from redis-server 7.0.15 by capture.py; format in README.md.")
    if sc.requirepass is not None:
        lines.append("@requirepass " + sc.requirepass)
    for user, pw in sc.users:
        lines.append("@user %s %s" % (user, pw))
    try:
        for step in sc.steps:
            flags = {}
            if isinstance(step, Send):
                if step.client not in socks:
                    s = socket.create_connection(("127.0.0.1", server.port))
                    s.setblocking(False)
                    socks[step.client] = s
                data = step.data * step.repeat
                if step.repeat > 1:
                    lines.append("C%d>*%d %s" % (step.client, step.repeat, escape(step.data)))
                else:
                    lines.append("C%d> %s" % (step.client, escape(data)))
                socks[step.client].setblocking(True)
                socks[step.client].sendall(data)
                socks[step.client].setblocking(False)
                flags[step.client] = step
            elif isinstance(step, Sleep):
                lines.append("sleep %d" % step.ms)
                time.sleep(step.ms / 1000.0)
            elif isinstance(step, Kill):
                lines.append("kill C%d" % step.client)
                host, port = socks[step.client].getsockname()
                server.admin_cmd("CLIENT", "KILL", "ADDR", "%s:%d" % (host, port))
            elif isinstance(step, Restart):
                lines.append("restart")
                server.stop()
                server.start()
            else:
                raise TypeError(step)
            received = {c: b"" for c in socks}
            closed = set()
            start = last = time.time()
            while time.time() - last < QUIET_S and time.time() - start < STEP_MAX_S:
                live = [s for c, s in socks.items() if c not in closed]
                if not live:
                    break
                r, _, _ = select.select(live, [], [], QUIET_S)
                for s in r:
                    c = next(k for k, v in socks.items() if v is s)
                    try:
                        d = s.recv(1 << 20)
                    except ConnectionResetError:
                        d = b""
                    if d:
                        received[c] += d
                    else:
                        closed.add(c)
                    last = time.time()
            for c in sorted(received):
                st = flags.get(c)
                for f in split_frames(received[c]):
                    f = mask(f, st is not None and st.mask_int)
                    kind = "<"
                    if st is not None and st.unordered:
                        kind = "<~"
                    elif st is not None and st.elements_unordered:
                        kind = "<%"
                    lines.append("C%d%s %s" % (c, kind, escape_masked(f)))
                if c in closed:
                    lines.append("C%d closed" % c)
                    socks.pop(c).close()
    finally:
        server.stop()
    with open(os.path.join(HERE, sc.name + ".txt"), "w") as out:
        out.write("\n".join(lines) + "\n")
    print("wrote %s.txt (%d lines)" % (sc.name, len(lines)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    for sc in SCENARIOS:
        if a.only and sc.name not in a.only:
            continue
        run(a.redis_server, sc)


# ---------------------------------------------------------------- scenarios
# (appended below)

PW = "s3cret-pw"
BIG = "x" * 200

SCENARIOS = [
    Scenario("handshake_resp2", """
RESP2 connection basics without a password: PING, ECHO, CLIENT SETNAME/GETNAME/ID,
SELECT, AUTH when no password is configured, HELLO without a version and HELLO 2.""", [
        send(1, "PING"),
        send(1, "PING", "hello"),
        send(1, "ECHO", "a\r\nb"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "CLIENT", "SETNAME", "roomcast-node-1"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "CLIENT", "SETNAME", "bad name"),
        send(1, "CLIENT", "SETNAME", "\x7f"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "CLIENT", "SETNAME", ""),
        send(1, "CLIENT", "GETNAME"),
        send(1, "CLIENT", "ID", mask_int=True),
        send(1, "SELECT", "5"),
        send(1, "SELECT", "15"),
        send(1, "SELECT", "16"),
        send(1, "SELECT", "-1"),
        send(1, "SELECT", "05"),
        send(1, "SELECT", "x"),
        send(1, "SELECT", "2147483648"),
        send(1, "SELECT", "-2147483649"),
        send(1, "AUTH", "whatever"),
        send(1, "AUTH", "default", "whatever"),
        send(1, "AUTH", "nobody", "whatever"),
        send(1, "AUTH", "a", "b", "c"),
        send(1, "HELLO"),
        send(1, "HELLO", "2"),
        send(1, "HELLO", "2", "SETNAME", "n2"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "QUIT"),
    ]),
    Scenario("handshake_resp3", """
HELLO 3 and its errors; RESP3 null, map and set replies; back to RESP2 with HELLO 2.""", [
        send(1, "HELLO", "1"),
        send(1, "HELLO", "4"),
        send(1, "HELLO", "-1"),
        send(1, "HELLO", "x"),
        send(1, "HELLO", "03"),
        send(1, "HELLO", "99999999999999999999"),
        send(1, "HELLO", "3", "FOO"),
        send(1, "HELLO", "3", "AUTH", "default"),
        send(1, "HELLO", "3", "SETNAME"),
        send(1, "HELLO", "3", "SETNAME", "a b"),
        send(1, "HELLO", "3", "SETNAME", "applied", "FOO"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "HELLO", "2", "AUTH", "nobody", "pw", "SETNAME"),
        send(1, "GET", "missing"),
        send(1, "HELLO", "3", "setname", "first", "SETNAME", "second"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "GET", "missing"),
        send(1, "HGETALL", "missing"),
        send(1, "SMEMBERS", "missing"),
        send(1, "HSET", "h", "f1", "v1", "f2", "v2"),
        send(1, "HGETALL", "h"),
        send(1, "SADD", "s", "3", "1", "2"),
        send(1, "SMEMBERS", "s"),
        send(1, "SET", "k", "v", "NX"),
        send(1, "SET", "k", "v", "NX"),
        send(1, "HELLO"),
        send(1, "CLIENT", "SETNAME", ""),
        send(1, "CLIENT", "GETNAME"),
        send(1, "HELLO", "2"),
        send(1, "GET", "missing"),
        send(1, "HGETALL", "h"),
        send(1, "SMEMBERS", "s"),
    ]),
    Scenario("auth_requirepass", """
A server with requirepass: what an unauthenticated connection may do, wrong passwords,
AUTH <password>, AUTH default <password>, HELLO 3 AUTH, and RESET dropping the login.""", [
        send(1, "PING"),
        send(1, "GET", "k"),
        send(1, "CLIENT", "SETNAME", "x"),
        send(1, "SUBSCRIBE", "ch"),
        send(1, "NOSUCHCMD", "arg"),
        send(1, "GET"),
        send(1, "CLIENT", "NOSUCHSUB"),
        send(1, "HELLO", "3"),
        send(1, "HELLO", "3", "SETNAME", "named-before-auth"),
        send(1, "HELLO", "3", "AUTH", "default", "wrong"),
        send(1, "HELLO", "3", "AUTH", "default", "wrong", "SETNAME", "bad name"),
        send(1, "AUTH", "wrong"),
        send(1, "AUTH", "default", "wrong"),
        send(1, "AUTH", "a", "b", "c"),
        send(1, "PING"),
        send(1, "AUTH", PW),
        send(1, "PING"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "AUTH", "wrong"),
        send(1, "PING"),
        send(1, "RESET"),
        send(1, "PING"),
        send(2, "HELLO", "3", "AUTH", "default", PW, "SETNAME", "bad name"),
        send(2, "PING"),
        send(2, "CLIENT", "GETNAME"),
        send(3, "HELLO", "3", "AUTH", "default", PW, "SETNAME", "node-3"),
        send(3, "CLIENT", "GETNAME"),
        send(3, "GET", "k"),
        send(4, "QUIT"),
    ], requirepass=PW),
    Scenario("auth_acl_user", """
A server with requirepass and an ACL user (ACL SETUSER alice on >pw ~* &* +@all).""", [
        send(1, "AUTH", "alice", "wrong"),
        send(1, "AUTH", "nobody", "alice-pw"),
        send(1, "AUTH", "alice-pw"),
        send(1, "PING"),
        send(1, "AUTH", "alice", "alice-pw"),
        send(1, "PING"),
        send(2, "HELLO", "3", "AUTH", "alice", "wrong"),
        send(2, "HELLO", "3", "AUTH", "alice", "alice-pw", "SETNAME", "alice-conn"),
        send(2, "CLIENT", "GETNAME"),
        send(2, "SET", "k", "v"),
        send(3, "HELLO", "2", "AUTH", "default", PW),
        send(3, "GET", "k"),
    ], requirepass=PW, users=[("alice", "alice-pw")]),
    Scenario("auth_acl_user_no_requirepass", """
An ACL user on a server whose default user has no password.""", [
        send(1, "AUTH", "alice-pw"),
        send(1, "AUTH", "alice", "wrong"),
        send(1, "AUTH", "alice", "alice-pw"),
        send(1, "HELLO", "3", "AUTH", "alice", "alice-pw"),
        send(1, "PING"),
    ], users=[("alice", "alice-pw")]),
    Scenario("auth_unauthenticated_limits", """
Before authentication Redis refuses multibulk lengths above 10 and bulk lengths above
16384 (protocol error, connection closed).""", [
        raw(1, b"*10\r\n"),
        raw(2, b"*11\r\n"),
        raw(3, b"*1\r\n$16384\r\n"),
        raw(4, b"*1\r\n$16385\r\n"),
        send(5, "AUTH", PW),
        raw(5, b"*11\r\n$4\r\nECHO\r\n"),
    ], requirepass=PW),
    Scenario("ping_modes", """
PING in RESP2 and RESP3, unsubscribed and subscribed.""", [
        send(1, "PING"),
        send(1, "PING", "msg"),
        send(1, "PING", "a", "b"),
        send(1, "SUBSCRIBE", "ch"),
        send(1, "PING"),
        send(1, "PING", "msg"),
        send(1, "PING", ""),
        send(1, "PING", "a", "b"),
        send(2, "HELLO", "3"),
        send(2, "SUBSCRIBE", "ch"),
        send(2, "PING"),
        send(2, "PING", "msg"),
        send(1, "UNSUBSCRIBE"),
        send(1, "PING"),
    ]),
    Scenario("subscribe_resp2", """
SUBSCRIBE/UNSUBSCRIBE in RESP2: running counts, duplicates, channels never subscribed,
unsubscribe-all (any order), unsubscribe with nothing subscribed, and the
subscribed-mode command restriction.""", [
        send(1, "UNSUBSCRIBE"),
        send(1, "UNSUBSCRIBE", "never"),
        send(1, "SUBSCRIBE"),
        send(1, "SUBSCRIBE", "a", "b", "a"),
        send(1, "SUBSCRIBE", "b"),
        send(1, "GET", "k"),
        send(1, "CLIENT", "SETNAME", "x"),
        send(1, "HELLO", "3"),
        send(1, "PUBLISH", "a", "x"),
        send(1, "SELECT", "1"),
        send(1, "NOSUCHCMD"),
        send(1, "GET"),
        send(1, "UNSUBSCRIBE", "zz", "a"),
        send(1, "SUBSCRIBE", "c", "d", "e"),
        send(1, "UNSUBSCRIBE", unordered=True),
        send(1, "UNSUBSCRIBE"),
        send(1, "GET", "k"),
        send(1, "SUBSCRIBE", "q"),
        send(1, "QUIT"),
    ]),
    Scenario("subscribe_resp3", """
SUBSCRIBE/UNSUBSCRIBE in RESP3: confirmations are pushes, other commands stay allowed,
a publish to one's own channel delivers the push before the integer reply.""", [
        send(1, "HELLO", "3"),
        send(1, "UNSUBSCRIBE"),
        send(1, "SUBSCRIBE", "a", "b", "a"),
        send(1, "GET", "k"),
        send(1, "SET", "k", "v"),
        send(1, "PUBLISH", "a", "to-self"),
        send(1, "UNSUBSCRIBE", "never", "a"),
        send(1, "SUBSCRIBE", "c", "d"),
        send(1, "UNSUBSCRIBE", unordered=True),
        send(1, "UNSUBSCRIBE"),
        send(1, "PUBLISH", "a", "nobody"),
    ]),
    Scenario("publish_counts", """
PUBLISH with 0, 1 and 2 subscribers (a RESP2 and a RESP3 one, on different databases),
binary payloads, and the receiver count after an unsubscribe.""", [
        send(3, "PUBLISH", "room", "zero"),
        send(1, "SUBSCRIBE", "room"),
        send(3, "PUBLISH", "room", "one"),
        send(2, "HELLO", "3"),
        send(2, "SELECT", "5"),
        send(2, "SUBSCRIBE", "room", "other"),
        send(3, "PUBLISH", "room", "two"),
        send(3, "PUBLISH", "room", b"bin\x00\r\n\xff"),
        send(3, "PUBLISH", "room", ""),
        send(3, "PUBLISH", "other", "only-2"),
        send(1, "UNSUBSCRIBE", "room"),
        send(3, "PUBLISH", "room", "one-again"),
        send(3, "PUBSUB", "NUMSUB", "room", "other", "none"),
        send(3, "PUBSUB", "NUMSUB"),
        send(3, "PUBSUB", "CHANNELS", elements_unordered=True),
        send(3, "PUBSUB", "CHANNELS", "r*"),
        send(3, "PUBSUB", "CHANNELS", "x*"),
        send(3, "PUBLISH", "room"),
    ]),
    Scenario("shards", """
SSUBSCRIBE and SPUBLISH with their own count next to a channel subscription, PUBSUB
NUMSUB/SHARDCHANNELS/SHARDNUMSUB, SUNSUBSCRIBE with and without names.""", [
        send(1, "SUBSCRIBE", "news.1"),
        send(2, "PUBLISH", "news.1", "hi"),
        send(2, "PUBLISH", "news.2", "hey"),
        send(2, "PUBSUB", "NUMSUB", "news.1", "news.2"),
        send(1, "SSUBSCRIBE", "news.1", "sh"),
        send(2, "SPUBLISH", "news.1", "sharded"),
        send(2, "SPUBLISH", "nobody", "x"),
        send(2, "PUBSUB", "SHARDCHANNELS", elements_unordered=True),
        send(2, "PUBSUB", "SHARDCHANNELS", "s?"),
        send(2, "PUBSUB", "SHARDNUMSUB", "news.1", "zz"),
        send(1, "SUNSUBSCRIBE", "nope"),
        send(1, "SUNSUBSCRIBE", unordered=True),
        send(1, "SUNSUBSCRIBE"),
        send(1, "PING"),
        send(1, "UNSUBSCRIBE"),
        send(1, "PING"),
    ]),
    Scenario("strings_ttl", """
SET (EX/PX/NX/XX/GET/KEEPTTL and their errors), GET, DEL, EXISTS, EXPIRE, PEXPIRE, TTL,
PTTL, PERSIST, TYPE, KEYS, DBSIZE; keys expiring after a sleep.""", [
        send(1, "GET", "k"),
        send(1, "SET", "k", "v"),
        send(1, "GET", "k"),
        send(1, "TTL", "k"),
        send(1, "PTTL", "k"),
        send(1, "TTL", "missing"),
        send(1, "PTTL", "missing"),
        send(1, "EXISTS", "k", "k", "missing"),
        send(1, "TYPE", "k"),
        send(1, "TYPE", "missing"),
        send(1, "SET", "k", "v2", "NX"),
        send(1, "SET", "k", "v2", "XX"),
        send(1, "SET", "k2", "v", "XX"),
        send(1, "SET", "k", "v3", "GET"),
        send(1, "SET", "k2", "v", "NX", "GET"),
        send(1, "SET", "k", "v", "NX", "XX"),
        send(1, "SET", "k", "v", "EX"),
        send(1, "SET", "k", "v", "EX", "0"),
        send(1, "SET", "k", "v", "EX", "-5"),
        send(1, "SET", "k", "v", "EX", "x"),
        send(1, "SET", "k", "v", "EX", "10", "PX", "5"),
        send(1, "SET", "k", "v", "EX", "9223372036854775"),
        send(1, "SET", "k", "v", "PX", "9223372036854775807"),
        send(1, "SET", "k", "v", "BOGUS"),
        send(1, "SET", "k", "v", "EX", "10", "EX", "100"),
        send(1, "TTL", "k"),
        send(1, "SET", "k", "w", "KEEPTTL"),
        send(1, "TTL", "k"),
        send(1, "SET", "k", "w"),
        send(1, "TTL", "k"),
        send(1, "EXPIRE", "k", "100"),
        send(1, "TTL", "k"),
        send(1, "EXPIRE", "k", "50", "GT"),
        send(1, "EXPIRE", "k", "50", "LT"),
        send(1, "TTL", "k"),
        send(1, "EXPIRE", "k", "500", "NX"),
        send(1, "EXPIRE", "k", "500", "XX"),
        send(1, "TTL", "k"),
        send(1, "EXPIRE", "k", "10", "NX", "XX"),
        send(1, "EXPIRE", "k", "10", "GT", "LT"),
        send(1, "EXPIRE", "k", "x", "BOGUS"),
        send(1, "EXPIRE", "k", "x"),
        send(1, "EXPIRE", "k", "9223372036854775"),
        send(1, "EXPIRE", "missing", "10"),
        send(1, "PERSIST", "k"),
        send(1, "PERSIST", "k"),
        send(1, "TTL", "k"),
        send(1, "PEXPIRE", "k", "100000"),
        send(1, "TTL", "k"),
        send(1, "EXPIRE", "k", "0"),
        send(1, "EXISTS", "k"),
        send(1, "SET", "short", "v", "PX", "2000"),
        send(1, "SET", "longer", "v", "EX", "100"),
        send(1, "SET", "pexp", "v"),
        send(1, "PEXPIRE", "pexp", "2000"),
        send(1, "GET", "short"),
        send(1, "KEYS", "*", elements_unordered=True),
        send(1, "DBSIZE"),
        Sleep(2500),
        send(1, "GET", "short"),
        send(1, "EXISTS", "pexp", "short", "longer"),
        send(1, "TTL", "short"),
        send(1, "KEYS", "*", elements_unordered=True),
        send(1, "DEL", "longer", "longer", "missing"),
        send(1, "DEL", "longer"),
        send(1, "SET", "a1", "v"),
        send(1, "SET", "b1", "v"),
        send(1, "KEYS", "a?"),
        send(1, "KEYS", "[ab]1", elements_unordered=True),
        send(1, "DBSIZE"),
        send(1, "SELECT", "3"),
        send(1, "GET", "a1"),
        send(1, "DBSIZE"),
        send(1, "SELECT", "0"),
        send(1, "FLUSHALL", "BOGUS"),
        send(1, "FLUSHDB"),
        send(1, "DBSIZE"),
    ]),
    Scenario("hashes_and_sets", """
HSET/HGET/HDEL/HGETALL/HLEN and SADD/SREM/SMEMBERS/SCARD/SISMEMBER, including WRONGTYPE
and keys vanishing when their last field or member goes.""", [
        send(1, "HSET", "h", "a"),
        send(1, "HSET", "h", "a", "1", "b"),
        send(1, "HSET", "h", "b", "1", "a", "2", "c", "3"),
        send(1, "HSET", "h", "a", "9", "d", "4"),
        send(1, "HGETALL", "h"),
        send(1, "HGET", "h", "a"),
        send(1, "HGET", "h", "zz"),
        send(1, "HLEN", "h"),
        send(1, "HLEN", "missing"),
        send(1, "HDEL", "h", "a", "zz", "a"),
        send(1, "HGETALL", "h"),
        send(1, "HSET", "h", "a", "again"),
        send(1, "HGETALL", "h"),
        send(1, "HDEL", "h", "b", "c", "d", "a"),
        send(1, "EXISTS", "h"),
        send(1, "HGETALL", "missing"),
        send(1, "HDEL", "missing", "f"),
        send(1, "SADD", "s", "3", "1", "2", "10", "-5", "1"),
        send(1, "SMEMBERS", "s"),
        send(1, "SCARD", "s"),
        send(1, "SISMEMBER", "s", "10"),
        send(1, "SISMEMBER", "s", "11"),
        send(1, "SREM", "s", "3", "3", "99"),
        send(1, "SMEMBERS", "s"),
        send(1, "SADD", "names", "node-b", "node-a", "node-c"),
        send(1, "SMEMBERS", "names", elements_unordered=True),
        send(1, "SADD", "s", "x"),
        send(1, "SMEMBERS", "s", elements_unordered=True),
        send(1, "SREM", "s", "1", "2", "10", "-5", "x"),
        send(1, "EXISTS", "s"),
        send(1, "SMEMBERS", "missing"),
        send(1, "SCARD", "missing"),
        send(1, "SREM", "missing", "m"),
        send(1, "SET", "str", "v"),
        send(1, "HSET", "str", "f", "v"),
        send(1, "HGETALL", "str"),
        send(1, "SADD", "str", "m"),
        send(1, "SMEMBERS", "str"),
        send(1, "GET", "names"),
        send(1, "SET", "names", "v", "GET"),
        send(1, "TYPE", "names"),
        send(1, "HSET", "hh", "f", "v"),
        send(1, "TYPE", "hh"),
        send(1, "EXPIRE", "hh", "100"),
        send(1, "TTL", "hh"),
        send(1, "SET", "names", "plain"),
        send(1, "TYPE", "names"),
    ]),
    Scenario("scripts", """
SCRIPT LOAD/EXISTS/FLUSH, EVALSHA with unknown SHAs and bad key counts, EVAL/EVALSHA of
small scripts (the model runs them through natively registered implementations).""", [
        send(1, "SCRIPT", "LOAD", "return 1"),
        send(1, "SCRIPT", "EXISTS", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
             "E0E1F9FABFC9D4800C877A703B823AC0578FF8DB", "nope"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
        send(1, "EVALSHA", "E0E1F9FABFC9D4800C877A703B823AC0578FF8DB", "0"),
        send(1, "EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"),
        send(1, "EVALSHA", "short", "0"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "x"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "2", "k"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "-1"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
        send(1, "SET", "k", "v"),
        send(1, "EVAL", "return redis.call('GET', KEYS[1])", "1", "k"),
        send(1, "EVAL", "return {KEYS[1], ARGV[1], 3}", "1", "key", "arg"),
        send(1, "SCRIPT", "LOAD", "return {KEYS[1], ARGV[1], 3}"),
        send(1, "EVALSHA", "6f6ee3a4fbd5b2dfb3b6a7a3a5c6c4a2b6f1a0d1", "0"),
        send(1, "SCRIPT", "FLUSH", "BOGUS"),
        send(1, "SCRIPT", "FLUSH"),
        send(1, "SCRIPT", "EXISTS", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
        send(1, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
        send(1, "SCRIPT", "NOSUCH"),
        send(1, "SCRIPT"),
        send(1, "SCRIPT", "LOAD"),
        send(1, "HELLO", "3"),
        send(1, "EVAL", "return redis.call('GET', KEYS[1])", "1", "missing"),
    ]),
    Scenario("restart_and_kill", """
A killed connection loses its subscriptions; a server restart closes every connection and
forgets keys and scripts (EVALSHA answers NOSCRIPT).""", [
        send(1, "SUBSCRIBE", "room"),
        send(2, "PUBLISH", "room", "before"),
        Kill(1),
        send(2, "PUBLISH", "room", "after"),
        send(2, "PUBSUB", "NUMSUB", "room"),
        send(2, "SET", "k", "v"),
        send(2, "SCRIPT", "LOAD", "return 1"),
        send(3, "SUBSCRIBE", "room"),
        Restart(),
        send(4, "GET", "k"),
        send(4, "EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
        send(4, "PUBSUB", "NUMSUB", "room"),
    ]),
    Scenario("protocol_errors", """
Malformed requests: Redis answers -ERR Protocol error and closes the connection.
Also the cases it tolerates (unchecked CRLF, NUL stops the line scan).""", [
        raw(1, b"*1\r\nfoo\r\n"),
        raw(2, b"*abc\r\n"),
        raw(3, b"*01\r\n"),
        raw(4, b"*2147483648\r\n"),
        raw(5, b"*1\r\n$-1\r\n"),
        raw(6, b"*1\r\n$04\r\nPING\r\n"),
        raw(7, b"*1\r\n$536870913\r\n"),
        raw(8, b"*1\r\n\r\n"),
        raw(9, b"ECHO \"unterminated\r\n"),
        raw(10, b"ECHO 'a'b\r\n"),
        raw(11, b"*", repeat=1),
        raw(11, b"1", repeat=70000),
        raw(12, b"*1\r\n$"),
        raw(12, b"1", repeat=70000),
        raw(13, b"P", repeat=70000),
        raw(14, b"*1\r\n\x00\r\n"),
        raw(14, b"x", repeat=70000),
        raw(15, b"*1\rX$4\rXPINGxx*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n"),
        raw(16, b"*1\r\n$4\r\nPING\r\n*1\r\nbad\r\n*1\r\n$4\r\nPING\r\n"),
        raw(17, b"*1\r\n$536870912\r\n"),
        raw(17, b"*1\r\n$4\r\nPING\r\n"),
        raw(18, b"*2147483647\r\n"),
        raw(18, b"$4\r\nPING\r\n"),
    ]),
    Scenario("inline_and_pipelining", """
Inline commands (quoting rules), empty lines, empty multibulk, pipelining, requests
split across writes, and QUIT discarding what follows it.""", [
        raw(1, b"PING\r\n"),
        raw(1, b"ping\n"),
        raw(1, b"  echo   \"a\\x41\\n\\\"q\\\" \"  \r\n"),
        raw(1, b"echo 'it\\'s'\r\n"),
        raw(1, b"echo a\"b c\"d\r\n"),
        raw(1, b"\r\n\n   \r\n"),
        raw(1, b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n"),
        raw(1, b"SET k \"\"\r\nGET k\r\nEXISTS k\r\n"),
        raw(1, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$"),
        raw(1, b"5\r\nhel"),
        raw(1, b"lo\r\n*2\r\n$3\r\nGET"),
        raw(1, b"\r\n$1\r\nk\r\n"),
        raw(1, b"ECHO x\r\nECHO"),
        raw(1, b" y\r\n"),
        raw(1, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n"),
    ]),
    Scenario("unknown_and_arity", """
Unknown commands and subcommands (argument quoting, CR/LF replaced, NUL truncation,
128-byte cut), container commands without a subcommand, wrong arity.""", [
        send(1, "NOSUCH"),
        send(1, "nosuch", "a", "b c"),
        send(1, "FOO\r\nBAR", "a\nb", "c\x00d", BIG),
        send(1, BIG),
        send(1, "nosuch", "a" * 50, "b" * 50, "c" * 50, "d"),
        send(1, "client|id"),
        send(1, "PUBSUB", "CHANNELS", "a", "b"),
        send(1, "PUBSUB", "SHARDCHANNELS", "a", "b"),
        send(1, "SCRIPT", "FLUSH", "SYNC", "ASYNC"),
        send(1, "CLIENT"),
        send(1, "CLIENT", "NOSUCH", "x"),
        send(1, "client", "setname"),
        send(1, "CLIENT", "GETNAME", "extra"),
        send(1, "PUBSUB"),
        send(1, "PUBSUB", "nosuch"),
        send(1, "GET"),
        send(1, "get", "a", "b"),
        send(1, "SET", "k"),
        send(1, "ECHO"),
        send(1, "SUBSCRIBE"),
        send(1, "PUBLISH", "ch"),
        send(1, "HGETALL"),
        send(1, "EXPIRE", "k"),
        send(1, "SELECT"),
        send(1, "RESET", "x"),
        send(1, "DEL"),
        send(1, "EXISTS"),
        send(1, "EVAL", "return 1"),
    ]),
    Scenario("reset", """
RESET: back to RESP2, db 0, no name, subscriptions dropped without confirmations.""", [
        send(1, "HELLO", "3", "SETNAME", "n"),
        send(1, "SELECT", "2"),
        send(1, "SET", "k", "db2"),
        send(1, "SUBSCRIBE", "a", "b"),
        send(1, "RESET"),
        send(1, "CLIENT", "GETNAME"),
        send(1, "GET", "k"),
        send(1, "GET", "missing"),
        send(2, "PUBLISH", "a", "x"),
        send(1, "SUBSCRIBE", "a"),
        send(1, "RESET"),
        send(1, "PING"),
    ]),
]


if __name__ == "__main__":
    main()
