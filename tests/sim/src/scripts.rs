//! The presence scripts, written natively against the model's keyspace (the model runs no
//! Lua). Each does what its Lua source in [`roomcast_core::presence`] does, command for command.

use std::time::Instant;

use super::model::{Keyspace, ModelRedis, Reply};
use roomcast_core::presence::{CLEAR_SCRIPT, CONN_SCRIPT, ROOM_SCRIPT, SWEEP_SCRIPT};

fn strings(r: Reply) -> Vec<Vec<u8>> {
    match r {
        Reply::Array(a) | Reply::Set(a) => a
            .into_iter()
            .filter_map(|x| match x {
                Reply::Bulk(b) | Reply::Status(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn exists(ks: &mut Keyspace, key: &[u8]) -> bool {
    matches!(ks.call(&[b"EXISTS", key]), Reply::Integer(1))
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    v
}

fn array(items: Vec<Vec<u8>>) -> Reply {
    Reply::Array(items.into_iter().map(Reply::Bulk).collect())
}

fn room(ks: &mut Keyspace, keys: &[Vec<u8>], argv: &[Vec<u8>], _: Instant) -> Reply {
    let (Some(key), Some(lease)) = (keys.first(), argv.first()) else {
        return Reply::error("wrong number of keys or args");
    };
    let f = strings(ks.call(&[b"HGETALL", key]));
    let mut out = Vec::new();
    let mut alive: Vec<(Vec<u8>, bool)> = Vec::new();
    for pair in f.chunks(2) {
        let [field, owner] = pair else { continue };
        let ok = match alive.iter().find(|(o, _)| o == owner) {
            Some((_, ok)) => *ok,
            None => {
                let ok = exists(ks, &cat(lease, owner));
                alive.push((owner.clone(), ok));
                ok
            }
        };
        if ok {
            out.push(field.clone());
        } else {
            ks.call(&[b"HDEL", key, field]);
        }
    }
    array(out)
}

fn conn(ks: &mut Keyspace, keys: &[Vec<u8>], argv: &[Vec<u8>], _: Instant) -> Reply {
    let (Some(key), Some(lease)) = (keys.first(), argv.first()) else {
        return Reply::error("wrong number of keys or args");
    };
    let mut out = Vec::new();
    for inst in strings(ks.call(&[b"SMEMBERS", key])) {
        if exists(ks, &cat(lease, &inst)) {
            out.push(inst);
        } else {
            ks.call(&[b"SREM", key, &inst]);
        }
    }
    array(out)
}

/// Removes one instance's entries through its index sets; returns how many rooms it had.
fn clear_instance(ks: &mut Keyspace, idx: &[u8], inst: &[u8]) -> usize {
    let rooms_key = cat(&cat(idx, inst), b":rooms");
    let conns_key = cat(&cat(idx, inst), b":conns");
    let rooms = strings(ks.call(&[b"SMEMBERS", &rooms_key]));
    for room in &rooms {
        let f = strings(ks.call(&[b"HGETALL", room]));
        for pair in f.chunks(2) {
            if let [field, owner] = pair {
                if owner == inst {
                    ks.call(&[b"HDEL", room, field]);
                }
            }
        }
    }
    for c in strings(ks.call(&[b"SMEMBERS", &conns_key])) {
        ks.call(&[b"SREM", &c, inst]);
    }
    ks.call(&[b"DEL", &rooms_key, &conns_key]);
    rooms.len()
}

fn sweep(ks: &mut Keyspace, keys: &[Vec<u8>], argv: &[Vec<u8>], _: Instant) -> Reply {
    let (Some(key), Some(lease), Some(idx)) = (keys.first(), argv.first(), argv.get(1)) else {
        return Reply::error("wrong number of keys or args");
    };
    let mut out = Vec::new();
    for inst in strings(ks.call(&[b"SMEMBERS", key])) {
        if exists(ks, &cat(lease, &inst)) {
            out.push(inst);
            continue;
        }
        clear_instance(ks, idx, &inst);
        ks.call(&[b"SREM", key, &inst]);
    }
    array(out)
}

fn clear(ks: &mut Keyspace, keys: &[Vec<u8>], argv: &[Vec<u8>], _: Instant) -> Reply {
    let (Some(idx), Some(inst)) = (argv.first(), argv.get(1)) else {
        return Reply::error("wrong number of args");
    };
    // The script declares the instance's rooms index (so that a cluster routes it to the
    // presence slot); a call without it would run on any node.
    if keys.first() != Some(&cat(&cat(idx, inst), b":rooms")) {
        return Reply::error("KEYS[1] must be the instance's rooms index");
    }
    Reply::Integer(clear_instance(ks, idx, inst) as i64)
}

/// Teaches a model the presence scripts.
pub fn register_presence_scripts(redis: &mut ModelRedis) {
    redis.register_script_impl(ROOM_SCRIPT, room);
    redis.register_script_impl(CONN_SCRIPT, conn);
    redis.register_script_impl(SWEEP_SCRIPT, sweep);
    redis.register_script_impl(CLEAR_SCRIPT, clear);
}
