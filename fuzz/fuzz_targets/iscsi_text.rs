//! Parses arbitrary login and text data, negotiates it and feeds it to a login: never a
//! panic; what parses emits back to text that parses to the same pairs; negotiated values
//! stay within the target's limits.
#![no_main]

use iscsi::login::{Authority, Login, Secrets, Status};
use iscsi::negotiate::{answer, Limits, Params};
use iscsi::pdu::{LoginRequest, Sns};
use libfuzzer_sys::fuzz_target;

struct Anyone;

impl Authority for Anyone {
    fn admit(&self, initiator: &str, _target: Option<&str>) -> Result<Secrets, Status> {
        if initiator.is_empty() {
            return Err(Status::AUTHORIZATION_FAILURE);
        }
        Ok(Secrets { initiator: b"0123456789abcdef".to_vec(), target: None, target_chap_name: "t".into() })
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = iscsi::text::parse(data) {
        let again = iscsi::text::parse(&iscsi::text::emit(&pairs)).expect("emitted text parses");
        assert_eq!(again, pairs);
        let limits = Limits::default();
        let mut p = Params::default();
        if answer(&pairs, &limits, &mut p).is_ok() && !p.discovery {
            assert!(p.max_burst <= limits.max_burst.max(262_144));
            assert!(p.first_burst <= p.max_burst);
            assert_eq!(p.error_recovery_level, 0);
        }
    }
    // The same bytes as the text of every login stage, in turn, on one login.
    let mut login = Login::new(Limits::default(), 1);
    for (csg, nsg) in [(0u8, 1u8), (0, 1), (0, 1), (1, 3)] {
        let req = LoginRequest {
            transit: true,
            continue_bit: false,
            current_stage: csg,
            next_stage: nsg,
            version_max: 0,
            version_min: 0,
            isid: 1,
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            data: data.to_vec(),
        };
        let _ = login.step(&req, &Anyone, [3; 17], Sns::default());
    }
});
