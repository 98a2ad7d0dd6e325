//! The standalone hub (`Hub::standalone`): no link, local delivery, with the same validation,
//! limits, events and metrics as a hub with links.

use std::time::{Duration, Instant};

use roomcast_core::presence::{PresenceAnswer, PresenceChange, PresenceQuery};
use roomcast_core::{
    Config, Delivery, Event, Hub, Identity, InstanceId, MemberError, MessageType, Publish,
    PublishError, RoomState,
};

const ME: Identity = Identity {
    instance: InstanceId(0x0a0b_0c0d),
    epoch: 40,
};

fn hub(config: Config) -> (Hub, Instant) {
    let now = Instant::now();
    (Hub::standalone(config, ME, now).unwrap(), now)
}

fn events(hub: &mut Hub) -> Vec<Event> {
    std::iter::from_fn(|| hub.poll_event()).collect()
}

fn deliveries(hub: &mut Hub) -> Vec<Delivery> {
    events(hub)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Nothing for the adapter to do on the network, and no deadline.
fn assert_no_io(hub: &mut Hub) {
    assert_eq!(hub.poll_link_request(), None);
    assert_eq!(hub.poll_transmit(), None);
    assert_eq!(hub.poll_timeout(), None);
}

fn publish<'a>(room: &'a str, data: &'a [u8], exclude: Option<&'a str>) -> Publish<'a> {
    Publish {
        room,
        message_type: MessageType::Broadcast,
        data,
        exclude_connection: exclude,
        timestamp: 7,
    }
}

#[test]
fn joins_are_live_at_once_and_leaves_remove_the_room() {
    let (mut hub, now) = hub(Config::default());
    assert!(hub.is_standalone());
    assert_no_io(&mut hub);
    let j = hub.join("r", "a", now).unwrap();
    assert!(j.added);
    assert_eq!(j.state, RoomState::Live);
    assert_eq!(hub.room_state("r"), Some(RoomState::Live));
    let ev = events(&mut hub);
    assert!(
        matches!(&ev[..], [Event::RoomLive { room }] if room.as_str() == "r"),
        "{ev:?}"
    );
    // A second member: no second RoomLive.
    assert_eq!(hub.join("r", "b", now).unwrap().state, RoomState::Live);
    assert!(events(&mut hub).is_empty());
    assert_eq!(hub.join_many(&["s", "t"], "a", now), Ok(2));
    assert_eq!(events(&mut hub).len(), 2);
    assert!(hub.leave("r", "a", now).unwrap());
    assert_eq!(hub.room_state("r"), Some(RoomState::Live), "b is still in");
    assert!(hub.leave("r", "b", now).unwrap());
    assert_eq!(hub.room_state("r"), None, "gone with its last member");
    let mut left: Vec<String> = hub
        .disconnect("a", now)
        .unwrap()
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["s", "t"]);
    assert_eq!(hub.rooms().count(), 0);
    let m = hub.metrics();
    assert_eq!((m.rooms, m.members, m.subscriptions_in_flight), (0, 0, 0));
    assert_no_io(&mut hub);
}

#[test]
fn publishes_are_delivered_at_once_in_order_with_exclusion_and_trailers() {
    let (mut hub, now) = hub(Config::default());
    hub.join("r", "a", now).unwrap();
    hub.join("r", "b", now).unwrap();
    let _ = events(&mut hub);
    let first = hub.publish(&publish("r", b"1", Some("a")), now).unwrap();
    for i in 2..=5u8 {
        hub.publish_quiet(&publish("r", &[b'0' + i], None), now)
            .unwrap();
    }
    // A room with no members here: numbered and confirmed, delivered to no one.
    let lonely = hub.publish(&publish("empty", b"x", None), now).unwrap();
    let ev = events(&mut hub);
    let confirmed: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::PublishConfirmed { id, receivers } => Some((*id, *receivers)),
            _ => None,
        })
        .collect();
    assert_eq!(
        confirmed,
        [(first, 1), (lonely, 0)],
        "only `publish` is confirmed"
    );
    let got: Vec<Delivery> = ev
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some(d),
            _ => None,
        })
        .collect();
    let data: Vec<&[u8]> = got.iter().map(|d| &d.message.data[..]).collect();
    assert_eq!(data, [b"1", b"2", b"3", b"4", b"5"]);
    // The trailer a member of a linked hub sees: this instance, one epoch, 1, 2, 3, ...
    let seqs: Vec<u64> = got.iter().map(|d| d.message.origin.unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(got
        .iter()
        .all(|d| d.message.origin.unwrap().origin == ME.instance));
    let epoch = got[0].message.origin.unwrap().epoch;
    assert!(got.iter().all(|d| d.message.origin.unwrap().epoch == epoch));
    // Exclusion: the first skips `a`, the others reach both.
    let to = |d: &Delivery| {
        let mut r: Vec<&str> = d.recipients().map(|c| c.as_str()).collect();
        r.sort();
        r.join(",")
    };
    assert_eq!(to(&got[0]), "b");
    assert_eq!(got[0].excluded().map(|c| c.as_str()), Some("a"));
    assert!(got[1..].iter().all(|d| to(d) == "a,b"));
    assert_eq!(got[0].message.message_type, MessageType::Broadcast);
    assert_eq!(got[0].message.timestamp, 7);
    let m = hub.metrics();
    assert_eq!(m.published, 6);
    assert_eq!(m.publish_confirmed, 6);
    assert_eq!(m.delivered, 5);
    assert_eq!(m.member_deliveries, 1 + 4 * 2);
    assert_eq!(m.publish_refused, 0);
    assert_no_io(&mut hub);
}

#[test]
fn the_configured_limits_apply() {
    let config = Config {
        max_room_id_bytes: 8,
        max_conn_id_bytes: 4,
        max_envelope_bytes: 200,
        ..Config::default()
    };
    let (mut hub, now) = hub(config);
    // Within the defaults, beyond the configured limits.
    assert!(matches!(
        hub.join("room-nine", "a", now),
        Err(MemberError::InvalidRoom(_))
    ));
    assert!(matches!(
        hub.join("r", "conn5", now),
        Err(MemberError::InvalidConnection(_))
    ));
    assert!(matches!(
        hub.join_many(&["r", "room-nine"], "a", now),
        Err((1, MemberError::InvalidRoom(_)))
    ));
    assert!(hub.rooms().next().is_none(), "nothing joined");
    assert_eq!(
        hub.join("room-eig", "abcd", now).unwrap().state,
        RoomState::Live
    );
    assert!(matches!(
        hub.publish(&publish("room-nine", b"x", None), now),
        Err(PublishError::InvalidRoom(_))
    ));
    assert!(matches!(
        hub.publish(&publish("room-eig", &[0; 300], None), now),
        Err(PublishError::TooLarge { max: 200, .. })
    ));
    assert!(matches!(
        hub.publish(&publish("room-eig", b"x", Some("conn5")), now),
        Err(PublishError::InvalidExclude(_))
    ));
    assert!(matches!(
        hub.presence_room("room-nine"),
        Err(roomcast_core::presence::PresenceError::Invalid(_))
    ));
    let m = hub.metrics();
    assert_eq!((m.publish_refused, m.published, m.delivered), (3, 0, 0));
    // Refusals number nothing: the next publish is the stream's first.
    hub.publish_quiet(&publish("room-eig", b"ok", None), now)
        .unwrap();
    let d = deliveries(&mut hub);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.origin.unwrap().seq, 1);
}

#[test]
fn presence_is_answered_locally_and_events_are_delivered_locally() {
    let config = Config {
        presence_events: true,
        ..Config::default()
    };
    let (mut hub, now) = hub(config);
    hub.join("r", "a", now).unwrap();
    hub.observe("r", "watcher", now).unwrap();
    hub.join("r", "b", now).unwrap();
    // The joins' presence events, delivered here (the observer makes none).
    let changes: Vec<(bool, String)> = deliveries(&mut hub)
        .iter()
        .map(|d| {
            assert_eq!(d.message.message_type, MessageType::PresenceEvent);
            let c = PresenceChange::decode(&d.message.data).unwrap();
            assert_eq!(c.instance, ME.instance);
            (c.joined, c.conn)
        })
        .collect();
    assert_eq!(changes, [(true, "a".into()), (true, "b".into())]);
    let ask = |hub: &mut Hub, q: PresenceQuery| {
        let id = hub.query_presence(q, now).unwrap();
        let ev = events(hub);
        match &ev[..] {
            [Event::Presence {
                id: got,
                result: Ok(answer),
                local_only: false,
            }] if *got == id => answer.clone(),
            other => panic!("expected one answer: {other:?}"),
        }
    };
    let q = hub.presence_room("r").unwrap();
    match ask(&mut hub, q) {
        PresenceAnswer::Room(m) => {
            let who: Vec<(InstanceId, &str)> =
                m.iter().map(|m| (m.instance, m.conn.as_str())).collect();
            assert_eq!(who, [(ME.instance, "a"), (ME.instance, "b")]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        {
            let q = hub.presence_connection("b").unwrap();
            ask(&mut hub, q)
        },
        PresenceAnswer::Connection(vec![ME.instance])
    );
    assert_eq!(
        {
            let q = hub.presence_connection("nobody").unwrap();
            ask(&mut hub, q)
        },
        PresenceAnswer::Connection(vec![])
    );
    assert_eq!(
        ask(&mut hub, PresenceQuery::Instances),
        PresenceAnswer::Instances(vec![ME.instance])
    );
    // A leave's event reaches the members still in the room.
    hub.leave("r", "a", now).unwrap();
    let d = deliveries(&mut hub);
    assert_eq!(d.len(), 1);
    let c = PresenceChange::decode(&d[0].message.data).unwrap();
    assert_eq!((c.joined, c.conn.as_str()), (false, "a"));
    let to: Vec<&str> = d[0].recipients().map(|c| c.as_str()).collect();
    assert_eq!(to.len(), 2, "b and the observer: {to:?}");
    // Presence off: refused as on any hub.
    let (mut off, now) = self::hub(Config {
        presence: false,
        ..Config::default()
    });
    assert!(off.query_presence(PresenceQuery::Instances, now).is_err());
}

#[test]
fn health_is_ok_with_no_links_and_shutdown_drains_at_once() {
    let (mut hub, now) = hub(Config::default());
    let health = hub.health();
    assert!(health.links.is_empty() && health.all_ready());
    assert!(hub.presence_ready(), "its answers are whole from the start");
    assert_eq!(hub.publish_link("r"), None);
    hub.join("r", "a", now).unwrap();
    hub.ping(now);
    hub.handle_timeout(now + Duration::from_secs(3600));
    assert_no_io(&mut hub);
    assert!(!hub.is_drained());
    hub.begin_shutdown(now);
    assert!(hub.is_drained(), "nothing waits for Redis");
    assert_eq!(hub.room_state("r"), None);
    assert!(matches!(
        hub.join("r", "a", now),
        Err(MemberError::Shutdown)
    ));
    assert!(matches!(
        hub.publish(&publish("r", b"x", None), now),
        Err(PublishError::Shutdown)
    ));
    hub.close(now);
    assert_no_io(&mut hub);
}
