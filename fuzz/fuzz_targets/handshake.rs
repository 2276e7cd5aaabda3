//! Arbitrary bytes as an HTTP upgrade request: `parse_head`, `validate_upgrade`,
//! the query/token helpers and `deflate::negotiate`. Never panic; a negotiated
//! window is 9..=15 and the response we would send parses back to the same params.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendezvous_gateway::ws::deflate::{DeflateParams, negotiate};
use rendezvous_gateway::ws::handshake::{parse_head, switching_response, validate_upgrade};

fn check_negotiation(result: Option<(DeflateParams, String)>) {
    if let Some((params, response)) = result {
        assert!((9..=15).contains(&params.server_window_bits));
        let again = negotiate([response.as_str()]).map(|(p, _)| p);
        assert_eq!(again, Some(params), "response `{response}` does not parse back");
    }
}

fuzz_target!(|input: &[u8]| {
    // The extension parser on its own, one offer list per line.
    if let Ok(text) = std::str::from_utf8(input) {
        check_negotiation(negotiate(text.lines()));
    }
    if let Ok(Some(head)) = parse_head(input) {
        assert!(head.len <= input.len());
        let _ = head.wants_websocket();
        let _ = head.query_param("token");
        if let Ok(accept) = validate_upgrade(&head) {
            let offers = head
                .headers
                .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>();
            let negotiated = negotiate(offers.iter().copied());
            let ext = negotiated.as_ref().map(|(_, r)| r.as_str());
            let response = switching_response(&accept, ext);
            assert!(response.ends_with(b"\r\n\r\n"));
            check_negotiation(negotiated);
        }
    }
});
