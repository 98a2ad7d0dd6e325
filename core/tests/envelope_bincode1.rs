//! The envelope against bincode 1.3.3, the encoder of the GraphWiz design: our body bytes are
//! its bytes, it reads our envelopes (trailer included), we read its. Plus hostile input.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use roomcast_core::envelope::{
    decode, encode, encoded_len, EnvelopeError, InstanceId, MessageType, Trailer,
    DEFAULT_MAX_ENVELOPE_BYTES, HARD_MAX_ENVELOPE_BYTES, TRAILER_LEN,
};
use serde::{Deserialize, Serialize};

/// Written as the GraphWiz design wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PubSubMessageType {
    Broadcast,
    PresenceEvent,
    SystemNotification,
}

/// Written as the GraphWiz design wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PubSubMessage {
    room_id: String,
    message_type: PubSubMessageType,
    data: Vec<u8>,
    exclude_connection: Option<String>,
    timestamp: i64,
}

fn ours(t: &PubSubMessageType) -> MessageType {
    match t {
        PubSubMessageType::Broadcast => MessageType::Broadcast,
        PubSubMessageType::PresenceEvent => MessageType::PresenceEvent,
        PubSubMessageType::SystemNotification => MessageType::SystemNotification,
    }
}

fn encode_msg(m: &PubSubMessage, trailer: Option<&Trailer>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(
        &mut out,
        &m.room_id,
        ours(&m.message_type),
        &m.data,
        m.exclude_connection.as_deref(),
        m.timestamp,
        trailer,
    );
    out
}

fn assert_decodes_to(payload: &Bytes, m: &PubSubMessage, trailer: Option<Trailer>) {
    let d = decode(payload, HARD_MAX_ENVELOPE_BYTES).expect("decodes");
    assert_eq!(d.room_id, m.room_id);
    assert_eq!(d.message_type, ours(&m.message_type));
    assert_eq!(&d.data[..], &m.data[..]);
    assert_eq!(d.exclude_connection, m.exclude_connection.as_deref());
    assert_eq!(d.timestamp, m.timestamp);
    assert_eq!(d.trailer, trailer);
}

/// Both directions for one message, with and without trailer.
fn check_compat(m: &PubSubMessage, t: &Trailer) {
    let theirs = bincode1::serialize(m).expect("bincode 1 serializes");
    let plain = encode_msg(m, None);
    assert_eq!(plain, theirs, "body bytes differ from bincode 1");
    let with_trailer = encode_msg(m, Some(t));
    assert_eq!(with_trailer.get(..theirs.len()), Some(&theirs[..]));
    assert_eq!(with_trailer.len(), theirs.len() + TRAILER_LEN);
    assert_eq!(
        with_trailer.len(),
        encoded_len(
            &m.room_id,
            m.data.len(),
            m.exclude_connection.as_deref(),
            true
        )
    );

    let back: PubSubMessage = bincode1::deserialize(&with_trailer).expect("bincode 1 reads ours");
    assert_eq!(&back, m);
    assert_decodes_to(&Bytes::from(theirs), m, None);
    assert_decodes_to(&Bytes::from(with_trailer), m, Some(*t));
}

fn fixtures() -> Vec<PubSubMessage> {
    vec![
        PubSubMessage {
            room_id: "hub/abc".into(),
            message_type: PubSubMessageType::Broadcast,
            data: b"{\"type\":\"chat\",\"text\":\"hi\"}".to_vec(),
            exclude_connection: Some("conn-42".into()),
            timestamp: 1_767_225_600,
        },
        PubSubMessage {
            room_id: "lobby".into(),
            message_type: PubSubMessageType::PresenceEvent,
            data: Vec::new(),
            exclude_connection: None,
            timestamp: 0,
        },
        PubSubMessage {
            room_id: String::new(),
            message_type: PubSubMessageType::SystemNotification,
            data: vec![0xff; 300],
            exclude_connection: Some(String::new()),
            timestamp: i64::MIN,
        },
        PubSubMessage {
            room_id: "räum/🎉:%".into(),
            message_type: PubSubMessageType::Broadcast,
            data: (0..=255).collect(),
            exclude_connection: Some("ü".into()),
            timestamp: i64::MAX,
        },
    ]
}

const T: Trailer = Trailer {
    origin: InstanceId(0xdead_beef_0000_0001),
    epoch: 3,
    seq: 17,
};

#[test]
fn fixtures_match_bincode1_both_ways() {
    for m in fixtures() {
        check_compat(&m, &T);
    }
}

#[test]
fn fixture_bytes_are_pinned() {
    // The first fixture as bincode 1.3.3 writes it, byte by byte.
    let m = &fixtures()[0];
    let mut expected = Vec::new();
    expected.extend_from_slice(&7u64.to_le_bytes());
    expected.extend_from_slice(b"hub/abc");
    expected.extend_from_slice(&0u32.to_le_bytes());
    expected.extend_from_slice(&(m.data.len() as u64).to_le_bytes());
    expected.extend_from_slice(&m.data);
    expected.push(1);
    expected.extend_from_slice(&7u64.to_le_bytes());
    expected.extend_from_slice(b"conn-42");
    expected.extend_from_slice(&1_767_225_600i64.to_le_bytes());
    assert_eq!(bincode1::serialize(m).expect("serializes"), expected);
    assert_eq!(encode_msg(m, None), expected);
}

#[test]
fn data_is_a_slice_of_the_payload() {
    let m = &fixtures()[3];
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"junk before");
    buf.extend_from_slice(&encode_msg(m, Some(&T)));
    let _ = buf.split_to(b"junk before".len());
    let payload = buf.freeze();
    let d = decode(&payload, DEFAULT_MAX_ENVELOPE_BYTES).expect("decodes");
    let inside = payload.as_ptr_range();
    let data = d.data.as_ptr_range();
    assert!(inside.start <= data.start && data.end <= inside.end);
    assert_eq!(&d.data[..], &m.data[..]);
    let room = d.room_id.as_bytes().as_ptr_range();
    assert!(inside.start <= room.start && room.end <= inside.end);
}

/// A full body whose field `field` (0 room id, 1 data, 2 exclude) has the length prefix
/// `len` instead of its real length 1.
fn hostile(field: usize, len: u64) -> Bytes {
    let prefix = |f: usize| if f == field { len } else { 1 }.to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&prefix(0));
    out.push(b'r');
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&prefix(1));
    out.push(b'd');
    out.push(1);
    out.extend_from_slice(&prefix(2));
    out.push(b'c');
    out.extend_from_slice(&[0; 8]);
    Bytes::from(out)
}

#[test]
fn huge_length_prefixes_are_clean_errors() {
    for field in 0..3 {
        for len in [
            1u64 << 60,
            1 << 63,
            u64::MAX,
            HARD_MAX_ENVELOPE_BYTES as u64 + 1,
            1000,
        ] {
            let payload = hostile(field, len);
            let err = decode(&payload, DEFAULT_MAX_ENVELOPE_BYTES).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::Malformed { .. }),
                "field {field}, prefix {len}: {err:?}"
            );
        }
        // The sane prefix decodes, so the errors above come from the prefix alone.
        assert!(decode(&hostile(field, 1), DEFAULT_MAX_ENVELOPE_BYTES).is_ok());
    }
}

#[test]
fn malformed_bodies() {
    let good = encode_msg(&fixtures()[0], None);
    let payload = |bytes: Vec<u8>| Bytes::from(bytes);

    // Truncated at every length.
    for cut in 0..good.len() {
        let p = payload(good[..cut].to_vec());
        assert!(matches!(
            decode(&p, DEFAULT_MAX_ENVELOPE_BYTES),
            Err(EnvelopeError::Malformed { .. })
        ));
    }
    // Unknown message type.
    let mut bad_type = good.clone();
    bad_type[8 + 7] = 3;
    let err = decode(&payload(bad_type), DEFAULT_MAX_ENVELOPE_BYTES).unwrap_err();
    assert!(err.to_string().contains("message type"), "{err}");
    // Invalid UTF-8 in the room id and in the excluded connection.
    let mut bad_room = good.clone();
    bad_room[8] = 0xff;
    let err = decode(&payload(bad_room), DEFAULT_MAX_ENVELOPE_BYTES).unwrap_err();
    assert!(err.to_string().contains("room id"), "{err}");
    let exclude_at = good.len() - 8 - 7;
    let mut bad_exclude = good.clone();
    bad_exclude[exclude_at] = 0xc3;
    let err = decode(&payload(bad_exclude), DEFAULT_MAX_ENVELOPE_BYTES).unwrap_err();
    assert!(err.to_string().contains("excluded connection"), "{err}");
    // An option tag that is neither 0 nor 1.
    let mut bad_tag = good.clone();
    bad_tag[exclude_at - 9] = 2;
    assert!(matches!(
        decode(&payload(bad_tag), DEFAULT_MAX_ENVELOPE_BYTES),
        Err(EnvelopeError::Malformed { .. })
    ));
}

fn message_strategy() -> impl Strategy<Value = PubSubMessage> {
    (
        any::<String>(),
        prop_oneof![
            Just(PubSubMessageType::Broadcast),
            Just(PubSubMessageType::PresenceEvent),
            Just(PubSubMessageType::SystemNotification),
        ],
        prop::collection::vec(any::<u8>(), 0..512),
        proptest::option::of(any::<String>()),
        any::<i64>(),
    )
        .prop_map(
            |(room_id, message_type, data, exclude_connection, timestamp)| PubSubMessage {
                room_id,
                message_type,
                data,
                exclude_connection,
                timestamp,
            },
        )
}

fn trailer_strategy() -> impl Strategy<Value = Trailer> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(o, epoch, seq)| Trailer {
        origin: InstanceId(o),
        epoch,
        seq,
    })
}

proptest! {
    #[test]
    fn random_messages_match_bincode1(m in message_strategy(), t in trailer_strategy()) {
        check_compat(&m, &t);
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..300) {
        let _ = decode(&Bytes::from(bytes), max);
    }

    #[test]
    fn mutated_envelopes_never_panic(
        m in message_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_msg(&m, Some(&T));
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let payload = Bytes::from(bytes);
        if let Ok(d) = decode(&payload, DEFAULT_MAX_ENVELOPE_BYTES) {
            // Whatever decodes is what bincode 1 reads from the same bytes.
            let theirs: PubSubMessage = bincode1::deserialize(&payload).expect("bincode 1 agrees");
            prop_assert_eq!(d.room_id, theirs.room_id.as_str());
            prop_assert_eq!(&d.data[..], &theirs.data[..]);
            prop_assert_eq!(d.exclude_connection, theirs.exclude_connection.as_deref());
            prop_assert_eq!(d.timestamp, theirs.timestamp);
        }
    }
}
