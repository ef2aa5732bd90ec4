//! The target's side of the login phase (RFC 7143 6.3, 12.1.3): stages, CHAP (MD5, with
//! mutual CHAP), operational negotiation and the status class of every failure, as a
//! state machine that is fed Login Requests and answers each with one Login Response.
//!
//! Who may log into what is the caller's: an [`Authority`] says, for an initiator name and
//! a target name, whether the login is allowed and which CHAP secrets apply. Randomness for
//! challenges comes from the caller too, so the machine is deterministic under test.

use md5::{Digest, Md5};

use crate::negotiate::{self, Limits, Params};
use crate::pdu::{LoginRequest, Sns, TargetPdu};
use crate::text;

/// Login status (class, detail), RFC 7143 11.13.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u8);

impl Status {
    /// Success.
    pub const SUCCESS: Status = Status(0, 0);
    /// Initiator error, not further specified (malformed text).
    pub const INITIATOR_ERROR: Status = Status(2, 0);
    /// Authentication failed.
    pub const AUTHENTICATION_FAILURE: Status = Status(2, 1);
    /// The initiator may not access the target.
    pub const AUTHORIZATION_FAILURE: Status = Status(2, 2);
    /// No such target.
    pub const NOT_FOUND: Status = Status(2, 3);
    /// No version in common.
    pub const UNSUPPORTED_VERSION: Status = Status(2, 5);
    /// A required key is missing.
    pub const MISSING_PARAMETER: Status = Status(2, 7);
    /// The session type is not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Status = Status(2, 9);
    /// A request not allowed during login (stage order, continuation abuse).
    pub const INVALID_DURING_LOGIN: Status = Status(2, 0x0b);
    /// The target cannot serve now.
    pub const OUT_OF_RESOURCES: Status = Status(3, 2);
}

/// The CHAP secrets of a login: the initiator's, and for mutual CHAP the target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The secret the initiator proves (its credential or `chap_secret`).
    pub initiator: Vec<u8>,
    /// The secret the target proves when the initiator asks (mutual CHAP).
    pub target: Option<Vec<u8>>,
    /// The name the target answers mutual CHAP with.
    pub target_chap_name: String,
}

/// Who may log into what.
pub trait Authority {
    /// Whether `initiator` may log into `target` (`None`: a discovery session), and the
    /// secrets its CHAP uses; the error is the login's status.
    fn admit(&self, initiator: &str, target: Option<&str>) -> Result<Secrets, Status>;
}

/// Where a login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chap {
    /// Nothing yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    Method,
    /// Challenge sent with this identifier and challenge bytes.
    Challenged { id: u8, challenge: [u8; 16] },
    /// The initiator proved its secret.
    Done,
}

/// What to do after one Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this response (and its text) and wait for the next request.
    Continue(TargetPdu, Vec<u8>),
    /// Send this response: the session enters full feature phase with `params`.
    Complete(TargetPdu, Vec<u8>, Box<Params>),
    /// Send this response and close the connection: the login failed.
    Fail(TargetPdu, Status),
}

/// Most text a login may accumulate over continued PDUs.
const MAX_TEXT: usize = 64 << 10;

/// A login in progress on one connection.
#[derive(Debug)]
pub struct Login {
    limits: Limits,
    params: Params,
    chap: Chap,
    secrets: Option<Secrets>,
    /// Text received with the C bit set, awaiting the rest.
    partial: Vec<u8>,
    /// The target's declarations went out.
    declared: bool,
    /// The stage the last response left the login in (0 security, 1 operational).
    stage: u8,
    /// TSIH to give the session on success.
    tsih: u16,
    /// The portal group serving the login, returned as TargetPortalGroupTag.
    portal_group: u16,
}

impl Login {
    /// A login with these limits, whose session gets `tsih` (non-zero) on success.
    pub fn new(limits: Limits, tsih: u16) -> Login {
        Login {
            limits,
            params: Params::default(),
            chap: Chap::Start,
            secrets: None,
            partial: Vec::new(),
            declared: false,
            stage: 0,
            tsih,
            portal_group: 1,
        }
    }

    /// Says the login arrived through portal group `tag` (1 unless set).
    pub fn with_portal_group(mut self, tag: u16) -> Login {
        self.portal_group = tag;
        self
    }

    /// Answers one Login Request. `random` supplies a CHAP identifier and challenge (17
    /// bytes; only read when a challenge is issued); `sns` the sequence numbers to report.
    pub fn step(&mut self, req: &LoginRequest, authority: &impl Authority, random: [u8; 17], sns: Sns) -> Step {
        let fail = |status: Status| Step::Fail(refusal(req, status, sns), status);
        if req.version_min > 0 {
            return fail(Status::UNSUPPORTED_VERSION);
        }
        if req.current_stage < self.stage {
            return fail(Status::INVALID_DURING_LOGIN);
        }
        if self.partial.len() + req.data.len() > MAX_TEXT {
            return fail(Status::INITIATOR_ERROR);
        }
        self.partial.extend_from_slice(&req.data);
        let response = |transit: bool, next: u8, continue_bit: bool, tsih: u16| TargetPdu::Login {
            transit,
            continue_bit,
            current_stage: req.current_stage,
            next_stage: if transit { next } else { 0 },
            version: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            status_class: 0,
            status_detail: 0,
            sns,
        };
        if req.continue_bit {
            // More text follows: acknowledge and wait (RFC 7143 6.3: T must be clear).
            return Step::Continue(response(false, 0, false, 0), Vec::new());
        }
        let pairs = match text::parse(&std::mem::take(&mut self.partial)) {
            Ok(p) => p,
            Err(_) => return fail(Status::INITIATOR_ERROR),
        };
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let mut answer: Vec<(String, String)> = Vec::new();
        // The first request names who is who.
        if self.secrets.is_none() {
            let Some(initiator) = get("InitiatorName") else { return fail(Status::MISSING_PARAMETER) };
            let discovery = match get("SessionType").unwrap_or("Normal") {
                "Discovery" => true,
                "Normal" => false,
                _ => return fail(Status::SESSION_TYPE_NOT_SUPPORTED),
            };
            let target = get("TargetName");
            if !discovery && target.is_none() {
                return fail(Status::MISSING_PARAMETER);
            }
            match authority.admit(initiator, if discovery { None } else { target }) {
                Ok(s) => self.secrets = Some(s),
                Err(status) => return fail(status),
            }
            self.params.initiator_name = Some(initiator.to_string());
            self.params.target_name = if discovery { None } else { target.map(str::to_string) };
            self.params.discovery = discovery;
            // RFC 7143 13.9: the answer to a normal session's first request names the
            // portal group, which multipath initiators tell paths apart by.
            if !discovery {
                answer.push(("TargetPortalGroupTag".into(), self.portal_group.to_string()));
            }
        }
        if req.current_stage == 0 {
            match self.security(&pairs, &mut answer, random) {
                Ok(()) => {}
                Err(status) => return fail(status),
            }
        } else if self.chap != Chap::Done {
            // The operational stage without authenticating first.
            return fail(Status::AUTHENTICATION_FAILURE);
        }
        // Operational keys may come in either stage once authenticated.
        if req.current_stage == 1 || self.chap == Chap::Done {
            let operational: Vec<(String, String)> =
                pairs.iter().filter(|(k, _)| !k.starts_with("CHAP_") && k != "AuthMethod").cloned().collect();
            match negotiate::answer(&operational, &self.limits, &mut self.params) {
                Ok(a) => answer.extend(a),
                Err(_) => return fail(Status::INITIATOR_ERROR),
            }
            if !self.declared && req.current_stage == 1 {
                answer.extend(negotiate::declarations(&self.limits));
                self.declared = true;
            }
        }
        let body = text::emit(&answer);
        let may_transit = req.transit && (req.current_stage == 1 || self.chap == Chap::Done);
        if may_transit && req.next_stage == 3 {
            let params = std::mem::take(&mut self.params);
            return Step::Complete(response(true, 3, false, self.tsih), body, Box::new(params));
        }
        if may_transit {
            self.stage = req.next_stage;
            return Step::Continue(response(true, req.next_stage, false, 0), body);
        }
        Step::Continue(response(false, 0, false, 0), body)
    }

    /// The security stage: AuthMethod, then CHAP_A, then CHAP_N/CHAP_R (and the mutual
    /// CHAP_I/CHAP_C). Only CHAP with MD5 is accepted.
    fn security(
        &mut self,
        pairs: &[(String, String)],
        answer: &mut Vec<(String, String)>,
        random: [u8; 17],
    ) -> Result<(), Status> {
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let secrets = self.secrets.as_ref().expect("admitted before the security stage");
        match self.chap {
            Chap::Start => {
                let offered = get("AuthMethod").ok_or(Status::AUTHENTICATION_FAILURE)?;
                if !offered.split(',').any(|m| m == "CHAP") {
                    return Err(Status::AUTHENTICATION_FAILURE);
                }
                answer.push(("AuthMethod".into(), "CHAP".into()));
                self.chap = Chap::Method;
                Ok(())
            }
            Chap::Method => {
                let algorithms = get("CHAP_A").ok_or(Status::AUTHENTICATION_FAILURE)?;
                if !algorithms.split(',').any(|a| a == "5") {
                    return Err(Status::AUTHENTICATION_FAILURE);
                }
                let id = random[0];
                let mut challenge = [0u8; 16];
                challenge.copy_from_slice(&random[1..]);
                answer.push(("CHAP_A".into(), "5".into()));
                answer.push(("CHAP_I".into(), id.to_string()));
                answer.push(("CHAP_C".into(), hex(&challenge)));
                self.chap = Chap::Challenged { id, challenge };
                Ok(())
            }
            Chap::Challenged { id, challenge } => {
                let (Some(_name), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(Status::AUTHENTICATION_FAILURE);
                };
                let got = unhex(r).ok_or(Status::AUTHENTICATION_FAILURE)?;
                if !same(&got, &chap_response(id, &secrets.initiator, &challenge)) {
                    return Err(Status::AUTHENTICATION_FAILURE);
                }
                // Mutual CHAP: the initiator challenges the target in turn.
                if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
                    let target_secret = secrets.target.as_ref().ok_or(Status::AUTHENTICATION_FAILURE)?;
                    let id: u8 = i.parse().map_err(|_| Status::AUTHENTICATION_FAILURE)?;
                    let c = unhex(c).ok_or(Status::AUTHENTICATION_FAILURE)?;
                    // RFC 7143 12.1.3: a challenge equal to ours is a reflection attack.
                    if c.is_empty() || c == challenge || target_secret == &secrets.initiator {
                        return Err(Status::AUTHENTICATION_FAILURE);
                    }
                    answer.push(("CHAP_N".into(), secrets.target_chap_name.clone()));
                    answer.push(("CHAP_R".into(), hex(&chap_response(id, target_secret, &c))));
                }
                self.chap = Chap::Done;
                Ok(())
            }
            Chap::Done => Ok(()),
        }
    }
}

/// The Login Response refusing `req` with `status` (which ends the connection).
pub fn refusal(req: &LoginRequest, status: Status, sns: Sns) -> TargetPdu {
    TargetPdu::Login {
        transit: false,
        continue_bit: false,
        current_stage: req.current_stage,
        next_stage: 0,
        version: 0,
        isid: req.isid,
        tsih: 0,
        itt: req.itt,
        status_class: status.0,
        status_detail: status.1,
        sns,
    }
}

/// CHAP's response: MD5 of the identifier, the secret and the challenge (RFC 1994 4.1).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compares without an early exit, so timing does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `0x`-prefixed hex, as iSCSI writes binary values.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A `0x`-prefixed hex value's bytes.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "iqn.2026-12.dev.pangate:demo.t0";
    const INITIATOR: &str = "iqn.2026-12.test:node-a";

    struct Table;

    impl Authority for Table {
        fn admit(&self, initiator: &str, target: Option<&str>) -> Result<Secrets, Status> {
            if initiator != INITIATOR {
                return Err(Status::AUTHORIZATION_FAILURE);
            }
            if target.is_some_and(|t| t != TARGET) {
                return Err(Status::NOT_FOUND);
            }
            Ok(Secrets {
                initiator: b"node-a-secret-0001".to_vec(),
                target: Some(b"target-secret-0002".to_vec()),
                target_chap_name: TARGET.into(),
            })
        }
    }

    fn req(csg: u8, nsg: u8, transit: bool, text: &[(&str, &str)]) -> LoginRequest {
        let pairs: Vec<(String, String)> = text.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LoginRequest {
            transit,
            continue_bit: false,
            current_stage: csg,
            next_stage: nsg,
            version_max: 0,
            version_min: 0,
            isid: 0x8000_0000_0001,
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: text::emit(&pairs),
        }
    }

    fn pairs(body: &[u8]) -> Vec<(String, String)> {
        text::parse(body).unwrap()
    }

    fn value(body: &[u8], k: &str) -> Option<String> {
        pairs(body).into_iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    const RANDOM: [u8; 17] = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

    /// Runs the security stage up to the challenge; returns the challenge's id and bytes.
    fn challenged(l: &mut Login) -> (u8, Vec<u8>) {
        let s = Sns::default();
        let first =
            req(0, 1, false, &[("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP,None")]);
        let Step::Continue(_, body) = l.step(&first, &Table, RANDOM, s) else { panic!("AuthMethod") };
        assert_eq!(value(&body, "AuthMethod").as_deref(), Some("CHAP"));
        let Step::Continue(_, body) = l.step(&req(0, 1, false, &[("CHAP_A", "7,5")]), &Table, RANDOM, s) else {
            panic!("CHAP_A")
        };
        let id: u8 = value(&body, "CHAP_I").unwrap().parse().unwrap();
        (id, unhex(&value(&body, "CHAP_C").unwrap()).unwrap())
    }

    #[test]
    fn a_normal_sessions_first_answer_names_the_portal_group() {
        let s = Sns::default();
        let first = req(0, 1, false, &[("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP")]);
        let mut l = Login::new(Limits::default(), 1).with_portal_group(2);
        let Step::Continue(_, body) = l.step(&first, &Table, RANDOM, s) else { panic!("first") };
        assert_eq!(value(&body, "TargetPortalGroupTag").as_deref(), Some("2"));
        let Step::Continue(_, body) = l.step(&req(0, 1, false, &[("CHAP_A", "5")]), &Table, RANDOM, s) else {
            panic!("CHAP_A")
        };
        assert_eq!(value(&body, "TargetPortalGroupTag"), None, "only in the first answer");
        let discovery =
            req(0, 1, false, &[("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "CHAP")]);
        let Step::Continue(_, body) = Login::new(Limits::default(), 1).step(&discovery, &Table, RANDOM, s) else {
            panic!("discovery")
        };
        assert_eq!(value(&body, "TargetPortalGroupTag"), None, "not for discovery");
    }

    #[test]
    fn chap_then_operational_then_full_feature() {
        let mut l = Login::new(Limits::default(), 9);
        let s = Sns::default();
        let (id, challenge) = challenged(&mut l);
        assert_eq!((id, challenge.len()), (7, 16));
        // The right response, and a mutual challenge the target must answer.
        let r = hex(&chap_response(id, b"node-a-secret-0001", &challenge));
        let mine = [0x55u8; 16];
        let prove =
            req(0, 1, true, &[("CHAP_N", INITIATOR), ("CHAP_R", &r), ("CHAP_I", "33"), ("CHAP_C", &hex(&mine))]);
        let Step::Continue(pdu, body) = l.step(&prove, &Table, RANDOM, s) else { panic!("CHAP_R") };
        let TargetPdu::Login { transit, next_stage, status_class, .. } = pdu else { panic!() };
        assert_eq!((transit, next_stage, status_class), (true, 1, 0));
        assert_eq!(value(&body, "CHAP_R"), Some(hex(&chap_response(33, b"target-secret-0002", &mine))));
        // Operational stage: keys negotiated, the target's declaration sent, then full feature.
        let op = req(1, 3, true, &[("HeaderDigest", "CRC32C,None"), ("MaxRecvDataSegmentLength", "65536")]);
        let Step::Complete(pdu, body, params) = l.step(&op, &Table, RANDOM, s) else { panic!("operational") };
        let TargetPdu::Login { transit, next_stage, tsih, .. } = pdu else { panic!() };
        assert_eq!((transit, next_stage, tsih), (true, 3, 9));
        assert_eq!(value(&body, "HeaderDigest").as_deref(), Some("CRC32C"));
        assert_eq!(value(&body, "MaxRecvDataSegmentLength").as_deref(), Some("262144"));
        assert!(params.header_digest);
        assert_eq!(params.initiator_max_recv_data, 65536);
        assert_eq!(params.initiator_name.as_deref(), Some(INITIATOR), "the session knows who logged in");
        assert_eq!(params.target_name.as_deref(), Some(TARGET));
        assert!(!params.discovery);
    }

    #[test]
    fn every_failure_gets_its_status_class_and_detail() {
        let s = Sns::default();
        let cases: Vec<(LoginRequest, Status)> = vec![
            (req(0, 1, false, &[("TargetName", TARGET)]), Status::MISSING_PARAMETER),
            (req(0, 1, false, &[("InitiatorName", INITIATOR)]), Status::MISSING_PARAMETER),
            (
                req(0, 1, false, &[("InitiatorName", "iqn.other"), ("TargetName", TARGET)]),
                Status::AUTHORIZATION_FAILURE,
            ),
            (req(0, 1, false, &[("InitiatorName", INITIATOR), ("TargetName", "iqn.nope")]), Status::NOT_FOUND),
            (
                req(0, 1, false, &[("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "None")]),
                Status::AUTHENTICATION_FAILURE,
            ),
            (
                req(0, 1, false, &[("InitiatorName", INITIATOR), ("SessionType", "Bulk"), ("TargetName", TARGET)]),
                Status::SESSION_TYPE_NOT_SUPPORTED,
            ),
            // Straight to the operational stage, skipping authentication.
            (req(1, 3, true, &[("InitiatorName", INITIATOR), ("TargetName", TARGET)]), Status::AUTHENTICATION_FAILURE),
        ];
        for (r, want) in cases {
            let mut l = Login::new(Limits::default(), 1);
            match l.step(&r, &Table, RANDOM, s) {
                Step::Fail(TargetPdu::Login { status_class, status_detail, .. }, st) => {
                    assert_eq!((Status(status_class, status_detail), st), (want, want));
                }
                other => panic!("{r:?}: {other:?}"),
            }
        }
        // A wrong CHAP response, and a reflected challenge.
        for (r, c) in [("0x00112233445566778899aabbccddeeff", None), ("", Some(()))] {
            let mut l = Login::new(Limits::default(), 1);
            let (id, challenge) = challenged(&mut l);
            let good = hex(&chap_response(id, b"node-a-secret-0001", &challenge));
            let reflected = hex(&challenge);
            let text: Vec<(&str, &str)> = match c {
                None => vec![("CHAP_N", INITIATOR), ("CHAP_R", r)],
                Some(()) => vec![("CHAP_N", INITIATOR), ("CHAP_R", &good), ("CHAP_I", "7"), ("CHAP_C", &reflected)],
            };
            assert!(matches!(
                l.step(&req(0, 1, true, &text), &Table, RANDOM, s),
                Step::Fail(_, Status::AUTHENTICATION_FAILURE)
            ));
        }
        // Version 1 and up is not iSCSI as RFC 7143 knows it.
        let mut v = req(0, 1, false, &[("InitiatorName", INITIATOR)]);
        v.version_min = 1;
        assert!(matches!(
            Login::new(Limits::default(), 1).step(&v, &Table, RANDOM, s),
            Step::Fail(_, Status::UNSUPPORTED_VERSION)
        ));
    }

    #[test]
    fn continued_text_is_gathered_and_bounded() {
        let s = Sns::default();
        let mut l = Login::new(Limits::default(), 1);
        let mut part = req(0, 1, false, &[]);
        part.continue_bit = true;
        part.data = b"InitiatorName=iqn.2026-12.te".to_vec();
        let Step::Continue(TargetPdu::Login { transit: false, .. }, body) = l.step(&part, &Table, RANDOM, s) else {
            panic!()
        };
        assert!(body.is_empty());
        let mut rest = req(0, 1, false, &[]);
        rest.data = format!("st:node-a\0TargetName={TARGET}\0AuthMethod=CHAP\0").into_bytes();
        let Step::Continue(_, body) = l.step(&rest, &Table, RANDOM, s) else { panic!() };
        assert_eq!(value(&body, "AuthMethod").as_deref(), Some("CHAP"));
        let mut flood = req(0, 1, false, &[]);
        flood.continue_bit = true;
        flood.data = vec![b'a'; MAX_TEXT + 1];
        assert!(matches!(
            Login::new(Limits::default(), 1).step(&flood, &Table, RANDOM, s),
            Step::Fail(_, Status::INITIATOR_ERROR)
        ));
    }

    #[test]
    fn chap_matches_rfc_1994_and_hex_round_trips() {
        // MD5(0x01 || "secret" || 16 zero bytes), computed independently with Python's hashlib.
        assert_eq!(hex(&chap_response(1, b"secret", &[0u8; 16])), "0x7570c653cdf4755ccffcaa80f29268d1");
        assert_eq!(unhex("0x00ff10"), Some(vec![0, 0xff, 0x10]));
        assert_eq!(unhex("0x0"), None);
        assert_eq!(unhex("00ff"), None);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
