//! roomcast in cluster mode on a real local cluster (three masters, three replicas), the
//! short path: three instances, rooms on every shard, each message delivered once, in
//! order, to each member; every room subscribed once, on its slot's master; presence
//! across instances.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast::{Builder, Config, PubSubMessage};
use roomcast_core::cluster::key_slot;
use roomcast_tests::{RedisCluster, RespReply};

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn rooms_on_every_shard_deliver_once_in_order() {
    let mut cluster = RedisCluster::start();
    let topology = cluster.wait_stable();
    let url = cluster.url();
    let masters = cluster.masters();
    // Rooms until every master owns at least two.
    let mut rooms = Vec::new();
    let mut per_master = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0.. {
        let room = format!("room-{i}");
        let slot = key_slot(format!("graphwiz:room:{room}").as_bytes());
        let master = cluster.master_port_of(slot);
        let n = per_master.entry(master).or_default();
        if *n < 2 {
            *n += 1;
            rooms.push(room);
        }
        if per_master.len() == masters.len() && per_master.values().all(|&n| n == 2) {
            break;
        }
    }
    drop(topology);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = || {
            let mut config = Config::from_url(&url).unwrap();
            config.pool_size = 1;
            Builder::new(config).connect_tokio()
        };
        let a = tokio::time::timeout(PATIENCE, connect())
            .await
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(PATIENCE, connect())
            .await
            .unwrap()
            .unwrap();
        let c = tokio::time::timeout(PATIENCE, connect())
            .await
            .unwrap()
            .unwrap();
        let mut members = Vec::new();
        for inst in [&b, &c] {
            let conn = inst
                .connection(&format!("m-{}", inst.instance().0))
                .await
                .unwrap();
            for room in &rooms {
                conn.join(room).await.unwrap();
            }
            tokio::time::timeout(PATIENCE, conn.wait_live())
                .await
                .unwrap()
                .unwrap();
            members.push(conn);
        }
        // Presence works across shards: every instance sees both members of every room
        // (registrations are written as the joins happen: wait for them, boundedly).
        for room in &rooms {
            let mut count = 0;
            for _ in 0..200 {
                count = a.room_member_count(room).await.unwrap();
                if count == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(count, 2, "{room}");
        }
        assert!(a
            .connection_exists(&format!("m-{}", b.instance().0))
            .await
            .unwrap());
        assert_eq!(a.instances().await.unwrap().len(), 3);
        const N: usize = 50;
        for i in 0..N {
            for room in &rooms {
                a.publish(PubSubMessage::broadcast(room.clone(), format!("{i}")))
                    .await
                    .unwrap();
            }
        }
        // A marker per room ends each member's stream of that room.
        for room in &rooms {
            a.publish(PubSubMessage::broadcast(room.clone(), "end"))
                .await
                .unwrap();
        }
        for conn in &mut members {
            let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
            let mut ended = BTreeSet::new();
            while ended.len() < rooms.len() {
                let m = tokio::time::timeout(PATIENCE, conn.next())
                    .await
                    .expect("messages in time")
                    .expect("stream open");
                let text = String::from_utf8(m.data.to_vec()).unwrap();
                if text == "end" {
                    ended.insert(m.room.as_str().to_string());
                } else {
                    seen.entry(m.room.as_str().to_string())
                        .or_default()
                        .push(text);
                }
            }
            let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
            for room in &rooms {
                assert_eq!(seen.get(room.as_str()), Some(&want), "{room}");
            }
        }
        // Every room is subscribed once on its master: b's and c's links each count one.
        for room in &rooms {
            let channel = format!("graphwiz:room:{room}");
            let master = cluster.master_port_of(key_slot(channel.as_bytes()));
            for port in cluster.live_ports() {
                let n = match cluster.cmd(port, &["PUBSUB", "SHARDNUMSUB", &channel]) {
                    RespReply::Array(Some(items)) => match items.get(1) {
                        Some(RespReply::Int(n)) => *n,
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                };
                let want = if port == master { 2 } else { 0 };
                assert_eq!(n, want, "{channel} on {port} (master {master})");
            }
        }
        for inst in [a, b, c] {
            inst.shutdown(Duration::from_secs(5)).await.unwrap();
        }
    });
}
