//! The JSON frames the server sends, and the room in a request path.

use serde_json::{json, Value};

use crate::{Member, Message as RoomMessage, MessageType};

/// The welcome frame: the room is live here; `members` are the room's members on every
/// instance when the socket joined (presence events keep a client's list current after it).
pub fn welcome(room: &str, conn: &str, instance: &str, members: &[Member]) -> String {
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!({"connection": m.conn.as_str(), "instance": m.instance.to_string()}))
        .collect();
    json!({
        "type": "welcome", "room": room, "connection": conn, "instance": instance,
        "members": members,
    })
    .to_string()
}

/// The body of a presence event (`join` or `leave`) published for `conn`.
pub fn presence_body(event: &str, conn: &str, instance: &str) -> String {
    json!({"event": event, "connection": conn, "instance": instance}).to_string()
}

/// The JSON text a client gets for a room message. `instance` is the instance the message
/// was published through (from its trailer; `null` when the publisher wrote none).
pub fn client_frame(msg: &RoomMessage) -> String {
    let room = msg.room.as_str();
    let text = String::from_utf8_lossy(&msg.data);
    let instance = msg.origin.map(|t| t.origin.to_string());
    let value = match msg.message_type {
        MessageType::Broadcast => json!({
            "type": "broadcast", "room": room,
            "from": msg.exclude_connection.as_deref(), "instance": instance, "data": text,
        }),
        MessageType::PresenceEvent => {
            let data = serde_json::from_slice::<Value>(&msg.data)
                .unwrap_or_else(|_| Value::String(text.into_owned()));
            json!({"type": "presence", "room": room, "instance": instance, "data": data})
        }
        MessageType::SystemNotification => {
            json!({"type": "system", "room": room, "instance": instance, "data": text})
        }
    };
    value.to_string()
}

/// The room of a request path `/rooms/{room}`, percent-decoded (it may contain `/`), or why
/// there is none.
pub fn room_from_path(path: &str) -> Result<String, String> {
    let raw = path
        .strip_prefix("/rooms/")
        .ok_or_else(|| "connect to /rooms/{room}".to_string())?;
    let room = percent_decode(raw).map_err(|e| format!("{e} in the room id"))?;
    if room.is_empty() {
        return Err("empty room id: connect to /rooms/{room}".into());
    }
    Ok(room)
}

/// The value of `key` in a URL query string (`a=1&b=2`), percent-decoded.
pub(crate) fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")).ok())
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(format!(
                    "bad percent-encoding at byte {i} (write '%' as %25)"
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_string())
}

/// Percent-encodes a room id for a URL path (`/` is kept).
pub fn percent_encode(room: &str) -> String {
    let mut out = String::with_capacity(room.len());
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_paths_round_trip_and_bad_ones_say_why() {
        for room in ["lobby", "team/α b", "100%", "a?b#c"] {
            let path = format!("/rooms/{}", percent_encode(room));
            assert_eq!(room_from_path(&path).as_deref(), Ok(room));
        }
        assert!(room_from_path("/rooms/%zz")
            .unwrap_err()
            .contains("percent"));
        assert!(room_from_path("/rooms/").unwrap_err().contains("empty"));
        assert!(room_from_path("/rooms/%ff").unwrap_err().contains("UTF-8"));
        assert!(room_from_path("/other").is_err());
    }
}
