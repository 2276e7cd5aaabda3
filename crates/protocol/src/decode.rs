use serde_json::{Map, Value};

use crate::PROTOCOL_VERSION;
use crate::error::{ErrorCode, ErrorFrame};
use crate::message::{ClientMessage, Request, RequestId};

/// Why a client message was refused; becomes an `error` frame via [`DecodeError::to_frame`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// The error code for the frame.
    pub code: ErrorCode,
    /// A human-readable explanation naming the offending part.
    pub message: String,
    /// The request id, when it could be read before the failure.
    pub id: Option<RequestId>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<RequestId>) -> Self {
        Self { code, message: message.into(), id }
    }

    /// The `error` frame that answers the refused message.
    pub fn to_frame(&self) -> ErrorFrame {
        ErrorFrame { code: self.code, message: self.message.clone(), reference: self.id.clone() }
    }
}

/// Decodes one client text message, naming exactly what is wrong when it is refused.
///
/// Checks, in order: valid JSON, an object with a string `type`, a supported `v`,
/// a well-formed `id`, a known `type`, and finally the fields of that type.
pub fn decode_client(text: &str) -> Result<Request, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(ErrorCode::BadJson, format!("invalid JSON: {e}"), None))?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::new(ErrorCode::MissingType, "message must be a JSON object", None));
    };
    let id = take_id(&mut map)?;
    let ty = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(DecodeError::new(
                ErrorCode::MissingType,
                format!("field `type` must be a string, got {}", kind(other)),
                id,
            ));
        }
        None => {
            return Err(DecodeError::new(ErrorCode::MissingType, "missing field `type`", id));
        }
    };
    check_version(&mut map, &id)?;
    map.remove("type");
    let result = ClientMessage::from_payload(&ty, Value::Object(map)).ok_or_else(|| {
        DecodeError::new(ErrorCode::UnknownType, format!("unknown message type `{}`", truncate(&ty)), id.clone())
    })?;
    let message = result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." || path.is_empty() { inner.to_string() } else { format!("field `{path}`: {inner}") };
        DecodeError::new(ErrorCode::BadField, msg, id.clone())
    })?;
    Ok(Request { id, message })
}

fn take_id(map: &mut Map<String, Value>) -> Result<Option<RequestId>, DecodeError> {
    match map.remove("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= RequestId::MAX_LEN => Ok(Some(RequestId::Text(s))),
        Some(Value::String(_)) => Err(DecodeError::new(
            ErrorCode::BadField,
            format!("field `id`: string ids are limited to {} bytes", RequestId::MAX_LEN),
            None,
        )),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().map(RequestId::Number)),
        Some(other) => Err(DecodeError::new(
            ErrorCode::BadField,
            format!("field `id` must be a string or a non-negative integer, got {}", kind(&other)),
            None,
        )),
    }
}

fn check_version(map: &mut Map<String, Value>, id: &Option<RequestId>) -> Result<(), DecodeError> {
    match map.remove("v") {
        None => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => Ok(()),
        Some(Value::Number(n)) => Err(DecodeError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {n} is not supported; this server speaks {PROTOCOL_VERSION}"),
            id.clone(),
        )),
        Some(other) => Err(DecodeError::new(
            ErrorCode::BadField,
            format!("field `v` must be an integer, got {}", kind(&other)),
            id.clone(),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Echoing attacker-controlled text back is fine, echoing megabytes of it is not.
fn truncate(s: &str) -> &str {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        decode_client(text).unwrap_err().code
    }

    #[test]
    fn decodes_ping_with_and_without_envelope_fields() {
        assert_eq!(decode_client(r#"{"type":"ping"}"#).unwrap().message, ClientMessage::Ping(crate::Ping {}));
        let req = decode_client(r#"{"v":1,"type":"ping","id":"a1"}"#).unwrap();
        assert_eq!(req.id, Some(RequestId::Text("a1".into())));
        let req = decode_client(r#"{"type":"ping","id":7}"#).unwrap();
        assert_eq!(req.id, Some(RequestId::Number(7)));
    }

    #[test]
    fn names_each_kind_of_garbage() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code(""), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::MissingType);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::MissingType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::MissingType);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"ping","v":2}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(r#"{"type":"ping","v":"1"}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"type":"ping","id":-1}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"type":"ping","id":[1]}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"type":"ping","extra":true}"#), ErrorCode::BadField);
    }

    #[test]
    fn error_keeps_the_request_id_and_names_the_type() {
        let err = decode_client(r#"{"type":"teleport","id":"x"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Text("x".into())));
        assert!(err.message.contains("teleport"), "{}", err.message);
    }

    #[test]
    fn long_ids_are_refused() {
        let long = "a".repeat(RequestId::MAX_LEN + 1);
        assert_eq!(code(&format!(r#"{{"type":"ping","id":"{long}"}}"#)), ErrorCode::BadField);
    }

    #[test]
    fn server_messages_have_stable_json() {
        let p = crate::ServerMessage::Pong { id: Some(RequestId::Number(3)) }.to_json();
        assert_eq!(p, r#"{"type":"pong","id":3}"#);
        let e = crate::ServerMessage::Error(ErrorFrame::new(ErrorCode::RateLimited, "slow down")).to_json();
        assert_eq!(e, r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
        let d = crate::ServerMessage::Draining { reconnect_after_ms: 5 }.to_json();
        assert_eq!(d, r#"{"type":"server.draining","reconnect_after_ms":5}"#);
    }

    #[test]
    fn every_listed_type_decodes_and_round_trips() {
        use crate::message::*;
        let samples: Vec<ClientMessage> = vec![
            Ping {}.into(),
            PresenceSubscribe { topic: "lobby".into() }.into(),
            PresenceUnsubscribe { topic: "lobby".into() }.into(),
            PresenceSet { state: Some(SettableState::Away), status: Some("brb".into()) }.into(),
            MatchJoin {
                prefs: MatchPrefs {
                    genders: Some(vec!["female".into()]),
                    region: Some("eu".into()),
                    topic: Some("music".into()),
                },
            }
            .into(),
            MatchLeave {}.into(),
            MatchAccept { proposal_id: "p1".into() }.into(),
            MatchDecline { proposal_id: "p1".into() }.into(),
            InviteSend { user_id: "u2".into() }.into(),
            InviteAccept { invite_id: "i1".into() }.into(),
            InviteDecline { invite_id: "i1".into() }.into(),
            InviteCancel { invite_id: "i1".into() }.into(),
            CallSignal {
                call_id: "c1".into(),
                kind: SignalKind::Ice,
                payload: serde_json::json!({"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}),
            }
            .into(),
            CallHangup { call_id: "c1".into() }.into(),
            CallBlock { user_id: "u2".into() }.into(),
            CallReport { user_id: "u2".into(), reason: ReportReason::Spam, text: Some("bot".into()) }.into(),
            IceServers {}.into(),
        ];
        let mut seen: Vec<&str> = samples.iter().map(|m| m.type_name()).collect();
        seen.sort_unstable();
        let mut listed = ClientMessage::TYPES.to_vec();
        listed.sort_unstable();
        assert_eq!(seen, listed, "every type in TYPES has a sample here, and no sample is unlisted");
        for m in samples {
            let back = decode_client(&m.to_json()).unwrap_or_else(|e| panic!("{}: {e}", m.type_name()));
            assert_eq!(back.message, m);
            let extra = m.to_json().replacen('{', r#"{"surprise":1,"#, 1);
            assert_eq!(decode_client(&extra).unwrap_err().code, ErrorCode::BadField, "{extra}");
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = decode_client(r#"{"type":"presence.set","state":"asleep"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadField);
        assert!(e.message.contains("state"), "{}", e.message);
        let e = decode_client(r#"{"type":"presence.subscribe"}"#).unwrap_err();
        assert!(e.message.contains("topic"), "{}", e.message);
    }

    #[test]
    fn matchmaking_fields_are_checked() {
        let e = decode_client(r#"{"type":"call.signal","call_id":"c","kind":"sdp","payload":{}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadField);
        assert!(e.message.contains("kind"), "{}", e.message);
        let e = decode_client(r#"{"type":"match.join","prefs":{"age":3}}"#).unwrap_err();
        assert!(e.message.contains("prefs"), "{}", e.message);
        let e = decode_client(r#"{"type":"call.report","user_id":"u","reason":"rude"}"#).unwrap_err();
        assert!(e.message.contains("reason"), "{}", e.message);
        let join = decode_client(r#"{"type":"match.join"}"#).unwrap();
        assert_eq!(join.message, ClientMessage::MatchJoin(crate::MatchJoin::default()));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = decode_client(&s);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            keys in proptest::collection::vec("[a-z]{1,6}", 0..5),
            ty in proptest::option::of("[a-z.]{0,8}"),
        ) {
            let mut map = Map::new();
            for k in keys { map.insert(k, Value::from(1)); }
            if let Some(t) = ty { map.insert("type".into(), Value::from(t)); }
            let _ = decode_client(&Value::Object(map).to_string());
        }
    }
}
