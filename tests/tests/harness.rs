//! The Redis test harness itself works: servers start on private ports, answer raw RESP,
//! carry pub/sub between two clients, restart on the same port, and run side by side.

use std::time::Duration;

use roomcast_tests::{wait_until, HarnessError, RedisServer, RespClient, RespReply};

const WAIT: Duration = Duration::from_secs(15);

fn bulk(s: &str) -> RespReply {
    RespReply::Bulk(Some(s.as_bytes().to_vec()))
}

#[test]
fn starts_on_a_private_port_and_answers_ping() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 0);
    assert_ne!(server.port(), 6379, "must never use the default port");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.cmd(&["PING"]), RespReply::Simple("PONG".into()));
    assert_eq!(server.cmd(&["ECHO", "hi"]), bulk("hi"));
    // No persistence, DEBUG allowed from loopback.
    let save = server.cmd(&["CONFIG", "GET", "save"]);
    assert_eq!(save.as_array().map(|a| a[1].clone()), Some(bulk("")));
    assert!(server.cmd(&["DEBUG", "SLEEP", "0"]).is_ok());
}

#[test]
fn publish_and_subscribe_with_two_raw_clients() {
    let server = RedisServer::start();
    let mut sub = server.client();
    sub.send(&["SUBSCRIBE", "graphwiz:room:a"]).unwrap();
    assert_eq!(
        sub.read_reply(),
        RespReply::Array(Some(vec![
            bulk("subscribe"),
            bulk("graphwiz:room:a"),
            RespReply::Int(1)
        ]))
    );
    assert_eq!(server.numsub("graphwiz:room:a"), 1);
    assert_eq!(server.channels("graphwiz:*"), vec!["graphwiz:room:a"]);

    let mut publisher = server.client();
    assert_eq!(
        publisher.cmd(&["PUBLISH", "graphwiz:room:a", "hello"]),
        RespReply::Int(1)
    );
    publisher
        .send_raw(&[b"PUBLISH", b"graphwiz:room:a", b"\x00\xff\r\n"])
        .unwrap();
    assert_eq!(publisher.read_reply(), RespReply::Int(1));
    assert_eq!(
        sub.read_reply().texts(),
        vec![
            Some("message".into()),
            Some("graphwiz:room:a".into()),
            Some("hello".into())
        ]
    );
    let binary = sub.read_reply();
    assert_eq!(
        binary.as_array().and_then(|a| a[2].as_bytes()),
        Some(&b"\x00\xff\r\n"[..])
    );
    // Nothing else arrives; the wait is bounded.
    assert_eq!(
        sub.read_reply_within(Duration::from_millis(200)).unwrap(),
        None
    );
    // In RESP2 a subscribed connection answers PING with an array.
    sub.send(&["PING"]).unwrap();
    assert_eq!(
        sub.read_reply(),
        RespReply::Array(Some(vec![bulk("pong"), bulk("")]))
    );
}

#[test]
fn restarts_on_the_same_port_with_the_same_args() {
    let mut server = RedisServer::with_args(&["--requirepass", "s3cret"]);
    let port = server.port();
    let first_pid = server.pid();
    assert!(server.cmd(&["SET", "k", "v"]).is_ok());
    let mut old = server.client();
    assert_eq!(old.cmd(&["PING"]), RespReply::Simple("PONG".into()));

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first_pid);
    assert!(server.is_running());
    // Nothing persisted; the password is still required.
    assert_eq!(server.cmd(&["GET", "k"]), RespReply::Bulk(None));
    let mut anonymous = RespClient::connect(port).unwrap();
    let refused = anonymous.cmd(&["GET", "k"]);
    assert!(
        refused.error().is_some_and(|e| e.starts_with("NOAUTH")),
        "{refused:?}"
    );
    // The old connection died with the old process.
    assert!(old.try_cmd(&["PING"]).is_err());

    server.stop();
    assert!(!server.is_running());
    assert!(server.try_client().is_err());
    server.start_again();
    assert_eq!(server.port(), port);
    assert_eq!(server.cmd(&["PING"]), RespReply::Simple("PONG".into()));
}

#[test]
fn two_servers_run_at_once_and_stay_apart() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    let mut sub_a = a.client();
    sub_a.send(&["SUBSCRIBE", "c"]).unwrap();
    sub_a.read_reply();
    assert_eq!(b.cmd(&["PUBLISH", "c", "x"]), RespReply::Int(0));
    assert_eq!(a.cmd(&["PUBLISH", "c", "y"]), RespReply::Int(1));
    assert_eq!(sub_a.read_reply().texts()[2].as_deref(), Some("y"));
    assert!(a.cmd(&["SET", "only", "a"]).is_ok());
    assert_eq!(b.cmd(&["EXISTS", "only"]), RespReply::Int(0));
}

#[test]
fn client_kill_acl_and_debug_sleep_work_for_fault_injection() {
    let server = RedisServer::start();
    let mut victim = server.client();
    assert!(victim.cmd(&["CLIENT", "SETNAME", "roomcast-0"]).is_ok());
    let names: Vec<String> = server
        .client_list()
        .into_iter()
        .filter_map(|c| c.get("name").cloned())
        .collect();
    assert!(names.iter().any(|n| n == "roomcast-0"), "{names:?}");
    assert_eq!(server.kill_clients_named("roomcast-"), 1);
    assert!(victim.try_cmd(&["PING"]).is_err());

    assert!(server
        .cmd(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">pw",
            "&graphwiz:*",
            "+@pubsub"
        ])
        .is_ok());
    let mut app = RespClient::connect(server.port()).unwrap();
    assert!(app.cmd(&["AUTH", "app", "pw"]).is_ok());
    assert_eq!(
        app.cmd(&["PUBLISH", "graphwiz:room:x", "m"]),
        RespReply::Int(0)
    );
    let denied = app.cmd(&["PUBLISH", "other", "m"]);
    assert!(
        denied.error().is_some_and(|e| e.starts_with("NOPERM")),
        "{denied:?}"
    );

    // DEBUG SLEEP stalls the whole server; a bounded read sees the stall.
    let mut sleeper = server.client();
    sleeper.send(&["DEBUG", "SLEEP", "1"]).unwrap();
    let mut other = server.client();
    other.send(&["PING"]).unwrap();
    assert!(sleeper.read_reply().is_ok());
    assert_eq!(other.read_reply(), RespReply::Simple("PONG".into()));
    assert!(wait_until(WAIT, || server.numsub("nobody") == 0));
}

#[test]
fn a_missing_binary_is_reported_with_the_fix() {
    let err = RedisServer::try_start_with("/nonexistent/redis-server", &[]).unwrap_err();
    assert!(matches!(err, HarnessError::Missing(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("scripts/test.sh") && text.contains("apt-get install"),
        "{text}"
    );
}

#[test]
fn a_bad_argument_is_reported_with_the_log() {
    let err = RedisServer::try_start_with("redis-server", &["--no-such-option", "1"]).unwrap_err();
    assert!(matches!(err, HarnessError::Start(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Bad directive"), "{text}");
}
