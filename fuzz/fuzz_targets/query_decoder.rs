//! Any bytes as a Query form body: decoding, and the typed request of every action, must
//! answer Ok or an EC2 error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strato::api::query::Params;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = Params::parse(data) else { return };
    let action = params.peek("Action").unwrap_or("DescribeSecurityGroups").to_owned();
    for name in std::iter::once(action.as_str()).chain(strato::api::SUPPORTED_ACTIONS.iter().copied()) {
        let Ok(mut p) = Params::parse(data) else { return };
        let _ = strato::api::decode_request(name, &mut p);
    }
});
