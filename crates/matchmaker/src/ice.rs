//! `ice.servers`: STUN URLs as configured, TURN with time-limited credentials in the
//! form coturn's REST API (`use-auth-secret`) checks.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::config::IceConfig;

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// STUN or TURN URLs.
    pub urls: Vec<String>,
    /// TURN only: `"<expiry unix secs>:<user_id>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: `base64(hmac_sha1(secret, username))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The TURN REST credential pair for `user_id`, valid until `expires_unix_secs`.
pub fn turn_credentials(secret: &str, user_id: &str, expires_unix_secs: u64) -> (String, String) {
    let username = format!("{expires_unix_secs}:{user_id}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// The servers to hand `user_id` at `now_unix_secs`.
pub(crate) fn ice_servers(cfg: &IceConfig, user_id: &str, now_unix_secs: u64) -> Vec<IceServer> {
    let mut out = Vec::with_capacity(2);
    if !cfg.stun_urls.is_empty() {
        out.push(IceServer { urls: cfg.stun_urls.clone(), username: None, credential: None });
    }
    if !cfg.turn_urls.is_empty() {
        let (username, credential) = turn_credentials(&cfg.turn_secret, user_id, now_unix_secs + cfg.turn_ttl_secs);
        out.push(IceServer { urls: cfg.turn_urls.clone(), username: Some(username), credential: Some(credential) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_an_independent_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let (user, cred) = turn_credentials("Jefe", "x", 0);
        assert_eq!(user, "0:x");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        // And the same construction over the coturn username.
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0:x");
        assert_eq!(cred, base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn known_vector_for_a_coturn_username() {
        // Computed with: printf '1700003600:alice' | openssl dgst -sha1 -hmac 'north-pole-secret' -binary | base64
        let (user, cred) = turn_credentials("north-pole-secret", "alice", 1_700_003_600);
        assert_eq!(user, "1700003600:alice");
        assert_eq!(cred, KNOWN);
    }
    const KNOWN: &str = "erHaXyPzbAqMUcGIPwtl27l1BM4=";

    #[test]
    fn servers_list_stun_then_turn_with_expiring_credentials() {
        let cfg = IceConfig {
            stun_urls: vec!["stun:stun.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478?transport=udp".into()],
            turn_secret: "0123456789abcdef".into(),
            turn_ttl_secs: 600,
        };
        let s = ice_servers(&cfg, "bob", 1_000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].username, None);
        assert_eq!(s[1].username.as_deref(), Some("1600:bob"));
        let json = serde_json::to_value(&s).unwrap();
        assert!(json[0].get("credential").is_none(), "{json}");
        assert!(ice_servers(&IceConfig { stun_urls: vec![], ..IceConfig::default() }, "bob", 0).is_empty());
    }
}
