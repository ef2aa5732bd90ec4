//! Operational parameter negotiation (RFC 7143 6.2, 13): the target's answer to each key an
//! initiator offers, by the key's rule, and the parameters in force afterwards.
//!
//! - List keys (HeaderDigest, DataDigest): the first offered value the target supports.
//! - Numerical keys take the minimum (MaxBurstLength, FirstBurstLength, MaxConnections,
//!   DefaultTime2Retain, MaxOutstandingR2T, ErrorRecoveryLevel) or the maximum
//!   (DefaultTime2Wait) of offer and target limit.
//! - Boolean keys take OR (InitialR2T, DataPDUInOrder, DataSequenceInOrder) or AND
//!   (ImmediateData).
//! - Declarative keys (MaxRecvDataSegmentLength, InitiatorName, ...) are recorded.
//! - Unknown keys get `NotUnderstood`, operational keys in a discovery session
//!   `Irrelevant`, malformed or out-of-range values `Reject`.

use thiserror::Error;

/// What the target allows; the negotiated values never exceed these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest burst (MaxBurstLength).
    pub max_burst: u32,
    /// Largest unsolicited burst (FirstBurstLength).
    pub first_burst: u32,
    /// Largest data segment the target receives (declared as its MaxRecvDataSegmentLength).
    pub max_recv_data: u32,
    /// Most outstanding R2Ts per task.
    pub max_outstanding_r2t: u32,
    /// Whether CRC32C digests may be used.
    pub digests: bool,
    /// Whether immediate data is allowed.
    pub immediate_data: bool,
    /// Whether the target requires an R2T before any unsolicited data-out (InitialR2T).
    pub initial_r2t: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_burst: 1 << 20,
            first_burst: 256 << 10,
            max_recv_data: 256 << 10,
            max_outstanding_r2t: 1,
            digests: true,
            immediate_data: true,
            initial_r2t: false,
        }
    }
}

/// The parameters in force for a session and its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// Largest data segment the target may send (the initiator's declaration).
    pub initiator_max_recv_data: u32,
    /// MaxBurstLength.
    pub max_burst: u32,
    /// FirstBurstLength.
    pub first_burst: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait.
    pub time2wait: u32,
    /// DefaultTime2Retain.
    pub time2retain: u32,
    /// ErrorRecoveryLevel (always 0 here).
    pub error_recovery_level: u32,
    /// InitiatorName, when given.
    pub initiator_name: Option<String>,
    /// TargetName, when given.
    pub target_name: Option<String>,
    /// SessionType=Discovery.
    pub discovery: bool,
}

impl Default for Params {
    /// RFC 7143's defaults, in force until negotiated otherwise.
    fn default() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            initiator_max_recv_data: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            time2wait: 2,
            time2retain: 20,
            error_recovery_level: 0,
            initiator_name: None,
            target_name: None,
            discovery: false,
        }
    }
}

/// A negotiation that cannot go on: the login fails with initiator error class.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiationError {
    /// FirstBurstLength above MaxBurstLength after negotiation.
    #[error("FirstBurstLength {first} exceeds MaxBurstLength {max}")]
    FirstBurstOverMax {
        /// FirstBurstLength.
        first: u32,
        /// MaxBurstLength.
        max: u32,
    },
    /// A SessionType other than Normal or Discovery.
    #[error("SessionType {0:?} is not Normal or Discovery")]
    SessionType(String),
}

/// The range a numerical key's value must lie in (RFC 7143 13).
fn numeric(key: &str) -> Option<(u32, u32)> {
    Some(match key {
        "MaxBurstLength" | "FirstBurstLength" => (512, (1 << 24) - 1),
        "MaxConnections" | "MaxOutstandingR2T" => (1, 65_535),
        "DefaultTime2Retain" | "DefaultTime2Wait" => (0, 3600),
        "ErrorRecoveryLevel" => (0, 2),
        _ => return None,
    })
}

/// Operational keys, which a discovery session finds irrelevant (RFC 7143 13).
fn session_operational(key: &str) -> bool {
    matches!(
        key,
        "MaxBurstLength"
            | "FirstBurstLength"
            | "MaxConnections"
            | "DefaultTime2Retain"
            | "DefaultTime2Wait"
            | "MaxOutstandingR2T"
            | "InitialR2T"
            | "ImmediateData"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
    )
}

fn parse_num(v: &str) -> Option<u32> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse().ok(),
        None => None,
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Answers the operational and declarative keys an initiator offered in one login or text
/// exchange, updating `params`. Security keys (AuthMethod, CHAP_*) are not answered here.
/// Returns the target's key=value answers, in offer order.
pub fn answer(
    offered: &[(String, String)],
    limits: &Limits,
    params: &mut Params,
) -> Result<Vec<(String, String)>, NegotiationError> {
    let mut out = Vec::new();
    // SessionType first: it decides what is relevant.
    if let Some((_, v)) = offered.iter().find(|(k, _)| k == "SessionType") {
        params.discovery = match v.as_str() {
            "Discovery" => true,
            "Normal" => false,
            other => return Err(NegotiationError::SessionType(other.to_string())),
        };
    }
    for (k, v) in offered {
        let key = k.as_str();
        let reply = |r: &str| (k.clone(), r.to_string());
        if params.discovery && session_operational(key) {
            out.push(reply("Irrelevant"));
            continue;
        }
        if let Some((lo, hi)) = numeric(key) {
            let Some(n) = parse_num(v).filter(|n| (lo..=hi).contains(n)) else {
                out.push(reply("Reject"));
                continue;
            };
            // The lower of offer and limit, but DefaultTime2Wait the higher; the target
            // keeps task state 20 s at most, allows one connection and recovers at level 0.
            let result = match key {
                "MaxBurstLength" => {
                    params.max_burst = n.min(limits.max_burst);
                    params.max_burst
                }
                "FirstBurstLength" => {
                    params.first_burst = n.min(limits.first_burst);
                    params.first_burst
                }
                "DefaultTime2Retain" => {
                    params.time2retain = n.min(20);
                    params.time2retain
                }
                "DefaultTime2Wait" => {
                    params.time2wait = n.max(2);
                    params.time2wait
                }
                "MaxOutstandingR2T" => {
                    params.max_outstanding_r2t = n.min(limits.max_outstanding_r2t);
                    params.max_outstanding_r2t
                }
                "ErrorRecoveryLevel" => {
                    params.error_recovery_level = 0;
                    0
                }
                _ => 1, // MaxConnections
            };
            out.push(reply(&result.to_string()));
            continue;
        }
        match key {
            "HeaderDigest" | "DataDigest" => {
                let choice = v.split(',').find(|c| *c == "None" || (*c == "CRC32C" && limits.digests));
                match choice {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            params.header_digest = on;
                        } else {
                            params.data_digest = on;
                        }
                        out.push(reply(c));
                    }
                    None => out.push(reply("Reject")),
                }
            }
            "InitialR2T" | "ImmediateData" | "DataPDUInOrder" | "DataSequenceInOrder" => {
                let Some(b) = parse_bool(v) else {
                    out.push(reply("Reject"));
                    continue;
                };
                let r = match key {
                    "InitialR2T" => {
                        params.initial_r2t = b || limits.initial_r2t;
                        params.initial_r2t
                    }
                    "ImmediateData" => {
                        params.immediate_data = b && limits.immediate_data;
                        params.immediate_data
                    }
                    // Data in order only: OR with the target's Yes.
                    "DataPDUInOrder" => {
                        params.data_pdu_in_order = true;
                        true
                    }
                    _ => {
                        params.data_sequence_in_order = true;
                        true
                    }
                };
                out.push(reply(&yes_no(r)));
            }
            "MaxRecvDataSegmentLength" => match parse_num(v).filter(|n| (512..=(1 << 24) - 1).contains(n)) {
                // Declarative: the initiator's own receive limit; no answer is due, but
                // the target declares its own.
                Some(n) => params.initiator_max_recv_data = n,
                None => out.push(reply("Reject")),
            },
            "InitiatorName" => params.initiator_name = Some(v.clone()),
            "TargetName" => params.target_name = Some(v.clone()),
            "SessionType" | "InitiatorAlias" => {}
            k if k.starts_with("X-") || k.starts_with("X#") => out.push(reply("NotUnderstood")),
            "AuthMethod" | "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R" => {}
            _ => out.push(reply("NotUnderstood")),
        }
    }
    if params.first_burst > params.max_burst && !params.discovery {
        return Err(NegotiationError::FirstBurstOverMax { first: params.first_burst, max: params.max_burst });
    }
    Ok(out)
}

/// The target's own declarations, sent once in the operational stage.
pub fn declarations(limits: &Limits) -> Vec<(String, String)> {
    vec![("MaxRecvDataSegmentLength".to_string(), limits.max_recv_data.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn answers(pairs: &[(&str, &str)], limits: &Limits) -> (Vec<(String, String)>, Params) {
        let mut p = Params::default();
        let a = answer(&offer(pairs), limits, &mut p).unwrap();
        (a, p)
    }

    fn get<'a>(a: &'a [(String, String)], k: &str) -> Option<&'a str> {
        a.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_key_combines_by_its_rule() {
        let limits = Limits::default();
        let (a, p) = answers(
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("MaxOutstandingR2T", "8"),
                ("ErrorRecoveryLevel", "2"),
                ("MaxConnections", "8"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("DataPDUInOrder", "No"),
                ("MaxRecvDataSegmentLength", "65536"),
            ],
            &limits,
        );
        // (key, answer) table: list, min, max, OR, AND.
        for (k, want) in [
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "None"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("DataPDUInOrder", "Yes"),
        ] {
            assert_eq!(get(&a, k), Some(want), "{k}");
        }
        assert_eq!(get(&a, "MaxRecvDataSegmentLength"), None, "declarative: no answer");
        assert!(p.header_digest && !p.data_digest && !p.initial_r2t && p.immediate_data);
        assert_eq!((p.max_burst, p.first_burst, p.initiator_max_recv_data), (1 << 20, 262_144, 65_536));
    }

    #[test]
    fn bad_values_unknown_keys_and_discovery_sessions_get_their_answers() {
        let (a, _) = answers(
            &[
                ("MaxBurstLength", "100"),
                ("FirstBurstLength", "lots"),
                ("ImmediateData", "Maybe"),
                ("HeaderDigest", "MD5"),
                ("X-com.example.Thing", "1"),
                ("Frobnicate", "1"),
            ],
            &Limits::default(),
        );
        for k in ["MaxBurstLength", "FirstBurstLength", "ImmediateData", "HeaderDigest"] {
            assert_eq!(get(&a, k), Some("Reject"), "{k}");
        }
        assert_eq!(get(&a, "X-com.example.Thing"), Some("NotUnderstood"));
        assert_eq!(get(&a, "Frobnicate"), Some("NotUnderstood"));
        let (a, p) = answers(&[("SessionType", "Discovery"), ("MaxBurstLength", "4096")], &Limits::default());
        assert!(p.discovery);
        assert_eq!(get(&a, "MaxBurstLength"), Some("Irrelevant"));
        let mut p = Params::default();
        assert_eq!(
            answer(&offer(&[("SessionType", "Other")]), &Limits::default(), &mut p),
            Err(NegotiationError::SessionType("Other".into()))
        );
        // Digests the target does not offer are declined in favour of None.
        let no_crc = Limits { digests: false, ..Limits::default() };
        assert_eq!(get(&answers(&[("DataDigest", "CRC32C,None")], &no_crc).0, "DataDigest"), Some("None"));
        assert_eq!(get(&answers(&[("DataDigest", "CRC32C")], &no_crc).0, "DataDigest"), Some("Reject"));
    }

    #[test]
    fn a_first_burst_over_the_max_burst_fails_the_login() {
        let mut p = Params::default();
        let e = answer(&offer(&[("MaxBurstLength", "4096"), ("FirstBurstLength", "8192")]), &Limits::default(), &mut p);
        assert_eq!(e, Err(NegotiationError::FirstBurstOverMax { first: 8192, max: 4096 }));
        assert_eq!(declarations(&Limits::default())[0].1, "262144");
    }
}
