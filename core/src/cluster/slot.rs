//! Hash slots: CRC16/XMODEM of a name's hash tag, modulo 16384, as Redis Cluster computes
//! them (`CLUSTER KEYSLOT`, which works on channel names too), and the room → slot policy.

use std::fmt;

use bytes::Bytes;

use crate::envelope::InstanceId;
use crate::naming::{ChannelNamer, RoomId};

/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: usize = 16384;

/// A hash slot, always below [`SLOT_COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

impl Slot {
    /// The slot numbered `n`, if `n` is below [`SLOT_COUNT`].
    pub fn new(n: u16) -> Option<Slot> {
        (usize::from(n) < SLOT_COUNT).then_some(Slot(n))
    }

    /// The slot's number, `0..16384`.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The slot's number as an index into a table of [`SLOT_COUNT`] entries.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection, no final xor): the
/// checksum Redis Cluster hashes names with.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        let i = usize::from((crc >> 8) as u8 ^ b);
        (crc << 8) ^ CRC16_TABLE[i]
    })
}

/// The table of CRC16/XMODEM for every value of the register's high byte.
const CRC16_TABLE: [u16; 256] = crc16_table();

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// The part of `name` Redis hashes: the bytes between the first `{` and the next `}` after
/// it when there are any, otherwise the whole name (also when that `}` follows the `{` at
/// once: `{}` is no tag, and no later pair is looked at).
pub fn hash_tag(name: &[u8]) -> &[u8] {
    let Some(open) = name.iter().position(|&b| b == b'{') else {
        return name;
    };
    let after = name.get(open + 1..).unwrap_or_default();
    match after.iter().position(|&b| b == b'}') {
        Some(0) | None => name,
        Some(close) => after.get(..close).unwrap_or(name),
    }
}

/// The hash slot of a key or channel name, as `CLUSTER KEYSLOT` computes it.
pub fn key_slot(name: &[u8]) -> Slot {
    // 16383 is the mask of SLOT_COUNT (a power of two), so the result is always a slot.
    Slot(crc16(hash_tag(name)) & (SLOT_COUNT as u16 - 1))
}

/// The hash slot of a room's channel (see the [module docs](super) for the tag rule).
pub fn room_slot(namer: &ChannelNamer, room: &RoomId) -> Slot {
    let mut channel = Vec::new();
    namer.write_room_channel(room, &mut channel);
    key_slot(&channel)
}

/// Groups channels into `SSUBSCRIBE`/`SUNSUBSCRIBE` batches: each batch holds channels of
/// one slot only (so never `-CROSSSLOT`) and at most `max` of them (at least 1); batches
/// come in slot order, channels within a slot in their given order.
pub fn batch_by_slot<T: AsRef<[u8]>>(channels: Vec<T>, max: usize) -> Vec<(Slot, Vec<T>)> {
    let max = max.max(1);
    let mut keyed: Vec<(Slot, T)> = channels
        .into_iter()
        .map(|c| (key_slot(c.as_ref()), c))
        .collect();
    // Stable: channels of one slot keep their order.
    keyed.sort_by_key(|(slot, _)| *slot);
    let mut out: Vec<(Slot, Vec<T>)> = Vec::new();
    for (slot, channel) in keyed {
        match out.last_mut() {
            Some((s, batch)) if *s == slot && batch.len() < max => batch.push(channel),
            _ => out.push((slot, vec![channel])),
        }
    }
    out
}

/// Why a channel prefix cannot be used in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPrefixError {
    prefix: String,
}

impl fmt::Display for ClusterPrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "channel prefix {:?} contains '{{' or '}}': in cluster mode Redis would read a \
             hash tag in it and could put every room in one hash slot (one shard); use a \
             prefix without braces, such as {:?}",
            self.prefix,
            self.prefix.replace(['{', '}'], "")
        )
    }
}

impl std::error::Error for ClusterPrefixError {}

/// Checks that `prefix` can be used in cluster mode: it must contain neither `{` nor `}`, so
/// that the only hash tag a channel can have is one written in the room id itself.
pub fn check_cluster_prefix(prefix: &str) -> Result<(), ClusterPrefixError> {
    if prefix.contains(['{', '}']) {
        return Err(ClusterPrefixError {
            prefix: prefix.to_string(),
        });
    }
    Ok(())
}

/// Tags are searched among the lowercase hexadecimal numbers below this; every slot has one
/// (the test `every_slot_has_a_control_tag` walks them all).
pub const CONTROL_TAG_SEARCH: u32 = 0x50000;

/// The smallest lowercase hexadecimal number whose text hashes to `slot`, below
/// [`CONTROL_TAG_SEARCH`] (at most 5 digits). Each call hashes up to a few hundred thousand
/// 5-byte strings (about a millisecond); call it on topology changes, not per message.
pub fn tag_for_slot(slot: Slot) -> Option<String> {
    let mut text = String::with_capacity(8);
    for n in 0..CONTROL_TAG_SEARCH {
        text.clear();
        // Writing to a String cannot fail.
        let _ = fmt::write(&mut text, format_args!("{n:x}"));
        if key_slot(text.as_bytes()) == slot {
            return Some(text);
        }
    }
    None
}

/// The control channel an instance uses to probe its subscriber link on the shard that owns
/// `slot`: `{prefix}:ctl:{instance as 16 hex digits}:{{tag}}` with a tag chosen so that the
/// channel hashes to `slot` (pass any slot the shard owns). It never equals a room channel
/// (those start with `{prefix}:room:`) nor the single-node control channel. `None` only if
/// no tag was found, which the tests rule out for every slot.
pub fn shard_control_channel(
    namer: &ChannelNamer,
    instance: InstanceId,
    slot: Slot,
) -> Option<Bytes> {
    let tag = tag_for_slot(slot)?;
    Some(Bytes::from(format!(
        "{}:ctl:{:016x}:{{{tag}}}",
        namer.prefix(),
        instance.0
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-by-bit CRC16/XMODEM, the definition the table must agree with.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_check_value() {
        // The catalogued check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_of_the_documented_edge_cases() {
        for (name, slot) in [
            (&b"{}abc"[..], 5980),
            (b"a{}{b}", 15033),
            (b"foo}{bar}", 5061),
            (b"foo", 12182),
            (b"{foo}bar", 12182),
            (b"bar{foo}", 12182),
            (b"{foo", 13308),
            (b"", 0),
        ] {
            assert_eq!(
                key_slot(name).get(),
                slot,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"foo}{bar}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}"), b"}");
        assert_eq!(hash_tag(b"{}"), b"{}");
        assert_eq!(hash_tag(b"{x}"), b"x");
    }

    #[test]
    fn slot_bounds() {
        assert_eq!(Slot::new(16383).map(Slot::get), Some(16383));
        assert_eq!(Slot::new(16384), None);
        assert_eq!(Slot::new(u16::MAX), None);
    }

    #[test]
    fn every_slot_has_a_control_tag() {
        let mut found = vec![false; SLOT_COUNT];
        let mut left = SLOT_COUNT;
        for n in 0..CONTROL_TAG_SEARCH {
            let slot = key_slot(format!("{n:x}").as_bytes()).index();
            if !found[slot] {
                found[slot] = true;
                left -= 1;
            }
        }
        assert_eq!(left, 0, "slots without a tag below CONTROL_TAG_SEARCH");
        let namer = ChannelNamer::default();
        for n in [0, 1, 5461, 10922, 16383] {
            let slot = Slot::new(n).expect("slot");
            let channel = shard_control_channel(&namer, InstanceId(0xabc), slot).expect("tag");
            assert_eq!(key_slot(&channel), slot);
            assert!(channel.starts_with(b"graphwiz:ctl:0000000000000abc:{"));
            assert_ne!(channel, namer.control_channel(InstanceId(0xabc)));
            assert!(namer.room_from_channel(&channel, 4096).is_none());
        }
    }

    #[test]
    fn prefixes_with_braces_are_refused_in_cluster_mode() {
        for ok in ["graphwiz", "app:v2", "a-b_c.d"] {
            check_cluster_prefix(ok).expect(ok);
        }
        for bad in ["{app}", "app{", "app}", "a{b}c"] {
            let e = check_cluster_prefix(bad).unwrap_err().to_string();
            assert!(
                e.contains("hash tag") && e.contains("without braces"),
                "{e}"
            );
        }
        let e = check_cluster_prefix("{app}").unwrap_err().to_string();
        assert!(e.contains("such as \"app\""), "{e}");
    }

    fn room(id: &str) -> RoomId {
        RoomId::new(id, 256).expect("valid room id")
    }

    #[test]
    fn rooms_spread_over_slots_and_shards() {
        let namer = ChannelNamer::default();
        let mut slots = std::collections::BTreeSet::new();
        let mut thirds = [0usize; 3];
        for i in 0..3000 {
            let slot = room_slot(&namer, &room(&format!("hub/room-{i}")));
            slots.insert(slot);
            thirds[slot.index() * 3 / SLOT_COUNT] += 1;
        }
        // 3000 names over 16384 slots: collisions are rare, and each third of the slot space
        // (one shard of a 3-master cluster) gets about a third of the rooms.
        assert!(slots.len() > 2700, "{} distinct slots", slots.len());
        for n in thirds {
            assert!((800..1200).contains(&n), "{thirds:?}");
        }
    }

    #[test]
    fn tagged_rooms_are_co_located() {
        let namer = ChannelNamer::default();
        let game = room_slot(&namer, &room("{game42}/chat"));
        for id in ["{game42}/lobby", "{game42}", "x/{game42}/y", "{game42}:a%b"] {
            assert_eq!(room_slot(&namer, &room(id)), game, "{id}");
        }
        // The tag is the escaped text: `a/b` is written `a:b` in the channel.
        assert_eq!(room_slot(&namer, &room("{a/b}/x")), key_slot(b"a:b"));
        assert_eq!(room_slot(&namer, &room("{a/b}/x")), key_slot(b"{a:b}"));
        // No tag: the whole channel is hashed, so the prefix matters.
        let other = ChannelNamer::new("other").expect("prefix");
        let plain = room("lobby");
        assert_eq!(
            room_slot(&namer, &plain),
            key_slot(b"graphwiz:room:lobby"),
            "untagged rooms hash the whole channel"
        );
        assert_ne!(room_slot(&namer, &plain), room_slot(&other, &plain));
        // `{}` is no tag.
        assert_eq!(
            room_slot(&namer, &room("{}x")),
            key_slot(b"graphwiz:room:{}x")
        );
    }

    #[test]
    fn batches_hold_one_slot_each() {
        let batches = batch_by_slot(vec!["{a}1", "b", "{a}2", "{a}3", "c"], 2);
        let a = key_slot(b"a");
        let mut want = vec![
            (a, vec!["{a}1", "{a}2"]),
            (a, vec!["{a}3"]),
            (key_slot(b"b"), vec!["b"]),
            (key_slot(b"c"), vec!["c"]),
        ];
        want.sort_by_key(|(s, _)| *s);
        assert_eq!(batches, want);
        assert!(batch_by_slot(Vec::<&str>::new(), 10).is_empty());
        assert_eq!(
            batch_by_slot(vec!["x", "x"], 0).len(),
            2,
            "max 0 counts as 1"
        );
    }

    proptest! {
        #[test]
        fn batching_keeps_every_channel_once_and_never_mixes_slots(
            names in prop::collection::vec("[a-c{}]{0,5}", 0..40),
            max in 1usize..5,
        ) {
            let batches = batch_by_slot(names.clone(), max);
            let mut seen: Vec<String> = Vec::new();
            for (slot, batch) in &batches {
                prop_assert!(!batch.is_empty() && batch.len() <= max);
                for name in batch {
                    prop_assert_eq!(key_slot(name.as_bytes()), *slot);
                }
                seen.extend(batch.iter().cloned());
            }
            let mut want = names.clone();
            want.sort();
            seen.sort();
            prop_assert_eq!(seen, want);
            prop_assert!(batches.windows(2).all(|w| w[0].0 <= w[1].0));
        }

        #[test]
        fn table_crc_matches_the_definition(data in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(crc16(&data), crc16_bitwise(&data));
        }

        #[test]
        fn slot_hashes_only_the_tag(
            before in "[a-z{}]{0,6}",
            tag in "[a-z]{1,6}",
            after in "[a-z{}]{0,6}",
        ) {
            // With no brace before it, `{tag}` is the first tag.
            let before = before.replace(['{', '}'], "");
            let name = format!("{before}{{{tag}}}{after}");
            prop_assert_eq!(key_slot(name.as_bytes()), key_slot(tag.as_bytes()));
        }

        #[test]
        fn a_rooms_tag_decides_its_slot(tag in "[a-z0-9/:%]{1,8}", rest in "[a-z0-9/]{0,8}") {
            let namer = ChannelNamer::default();
            let a = room_slot(&namer, &room(&format!("{{{tag}}}{rest}")));
            let b = room_slot(&namer, &room(&format!("{rest}{{{tag}}}")));
            prop_assert_eq!(a, b);
        }
    }
}
