//! Persistent reservations kept across restarts (APTPL): a LUN's registrations and
//! reservation in a small text file in the data directory, replaced atomically after every
//! PERSISTENT RESERVE OUT that changes them while APTPL is set, and removed when APTPL is
//! cleared. Without APTPL the state is lost on restart, as SPC-4 says.
//!
//! Redundant gateways (`[[gateway]]`) save it after every change, APTPL or not: the
//! gateway that takes a LUN over reads it there. A lone gateway restores only a copy saved
//! with APTPL.
//!
//! ```text
//! pangate-reservations 1
//! generation 7
//! reservation 1              (the TYPE code; 0: none)
//! aptpl 1                    (absent: 1)
//! ua 3 2a05 - 800000000001 iqn.2007-10.com.example:node
//!     seq  ASC/ASCQ target_port (or -: all) isid (or -) name: redundant gateways' attentions
//! reg 00000000000000aa 1 0 1 800000000001 iqn.2007-10.com.example:node
//!     key              holder all_tg_pt target_port isid (or -) name
//! ```

use std::path::{Path, PathBuf};

use scsi::pr::{AttentionTo, PrEvent, PrType, Registration};
use scsi::{InitiatorPort, Persistent};

const MAGIC: &str = "pangate-reservations 1";

/// Where LUN `image` of PAN `pan` keeps its reservations.
pub fn file_for(data_dir: &Path, pan: &str, image: &str) -> PathBuf {
    data_dir.join("reservations").join(pan).join(format!("{image}.pr"))
}

/// The file's text for `pr` and the attentions `events`.
pub fn encode(pr: &Persistent, events: &[PrEvent]) -> String {
    let mut s =
        format!("{MAGIC}\ngeneration {}\nreservation {}\n", pr.generation, pr.reservation.map_or(0, PrType::code));
    s.push_str(&format!("aptpl {}\n", u8::from(pr.aptpl)));
    for r in &pr.registrations {
        let isid = r.port.isid.map_or_else(|| "-".to_string(), |i| format!("{i:012x}"));
        s.push_str(&format!(
            "reg {:016x} {} {} {} {isid} {}\n",
            r.key,
            u8::from(r.holder),
            u8::from(r.all_tg_pt),
            r.target_port,
            r.port.name
        ));
    }
    for e in events {
        let port = e.to.target_port.map_or_else(|| "-".to_string(), |p| p.to_string());
        let isid = e.to.port.isid.map_or_else(|| "-".to_string(), |i| format!("{i:012x}"));
        s.push_str(&format!("ua {} {:02x}{:02x} {port} {isid} {}\n", e.seq, e.asc.0, e.asc.1, e.to.port.name));
    }
    s
}

/// Reads a file written by [`encode`]; says what is wrong with one that is not.
pub fn decode(text: &str) -> Result<(Persistent, Vec<PrEvent>), String> {
    let mut events: Vec<PrEvent> = Vec::new();
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l) != Some(MAGIC) {
        return Err(format!("the first line is not {MAGIC:?}"));
    }
    let mut pr = Persistent { aptpl: true, ..Persistent::default() };
    for (i, line) in lines {
        let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        let mut f = line.split(' ');
        match f.next() {
            Some("generation") => {
                pr.generation = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| bad("bad generation"))?
            }
            Some("reservation") => {
                let code: u8 = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| bad("bad reservation"))?;
                pr.reservation = match code {
                    0 => None,
                    c => Some(PrType::from_code(c).ok_or_else(|| bad("unknown reservation type"))?),
                };
            }
            Some("aptpl") => {
                pr.aptpl = match f.next() {
                    Some("0") => false,
                    Some("1") => true,
                    _ => return Err(bad("bad aptpl")),
                }
            }
            Some("ua") => {
                let mut next = || f.next().ok_or_else(|| bad("too few fields"));
                let seq: u64 = next()?.parse().map_err(|_| bad("bad number"))?;
                let code = u16::from_str_radix(next()?, 16).map_err(|_| bad("bad ASC/ASCQ"))?;
                let target_port = match next()? {
                    "-" => None,
                    p => Some(p.parse().map_err(|_| bad("bad target port"))?),
                };
                let isid = match next()? {
                    "-" => None,
                    h => Some(u64::from_str_radix(h, 16).map_err(|_| bad("bad ISID"))?),
                };
                let name = next()?.to_string();
                let in_order = events.last().is_none_or(|e| e.seq < seq);
                if !printable(&name) || !in_order || events.len() >= scsi::pr::MAX_PR_EVENTS {
                    return Err(bad("bad attention"));
                }
                let asc = scsi::Asc((code >> 8) as u8, code as u8);
                events.push(PrEvent { seq, to: AttentionTo { port: InitiatorPort { name, isid }, target_port }, asc });
            }
            Some("reg") => {
                let mut next = || f.next().ok_or_else(|| bad("too few fields"));
                let key = u64::from_str_radix(next()?, 16).map_err(|_| bad("bad key"))?;
                let holder = next()? == "1";
                let all_tg_pt = next()? == "1";
                let target_port = next()?.parse().map_err(|_| bad("bad target port"))?;
                let isid = match next()? {
                    "-" => None,
                    h => Some(u64::from_str_radix(h, 16).map_err(|_| bad("bad ISID"))?),
                };
                let name = next()?.to_string();
                if key == 0 || !printable(&name) || pr.registrations.len() >= scsi::pr::MAX_REGISTRATIONS {
                    return Err(bad("bad registration"));
                }
                let port = InitiatorPort { name, isid };
                pr.registrations.push(Registration { port, target_port, all_tg_pt, key, holder });
            }
            Some("") | None => {}
            Some(_) => return Err(bad("unknown line")),
        }
    }
    let holders = pr.registrations.iter().filter(|r| r.holder).count();
    let consistent = match pr.reservation {
        None => holders == 0,
        Some(k) if k.all_registrants() => holders == pr.registrations.len(),
        Some(_) => holders == 1,
    };
    if !consistent {
        return Err("the reservation's holders do not match its type".into());
    }
    Ok((pr, events))
}

/// An initiator name as one field of a line: printable ASCII without spaces, as iSCSI
/// names are.
fn printable(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Loads the reservations (and attentions) saved at `path`, if any.
pub fn load(path: &Path) -> anyhow::Result<Option<(Persistent, Vec<PrEvent>)>> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode(&text).map(Some).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Saves `pr` at `path` if APTPL is set or `shared` (redundant gateways), and removes the
/// file if neither.
pub fn save(path: &Path, pr: &Persistent, events: &[PrEvent], shared: bool) -> std::io::Result<()> {
    if !pr.aptpl && !shared {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::persist::write_atomic(path, encode(pr, events).as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_refused() {
        let pr = Persistent {
            generation: 7,
            reservation: Some(PrType::WriteExclusive),
            aptpl: true,
            registrations: vec![
                Registration {
                    port: InitiatorPort::new("iqn.2026-12.test:a", 0x8000_0000_0001),
                    target_port: 1,
                    all_tg_pt: false,
                    key: 0xAA,
                    holder: true,
                },
                Registration {
                    port: InitiatorPort { name: "iqn.2026-12.test:b".into(), isid: None },
                    target_port: 2,
                    all_tg_pt: true,
                    key: 0xBB,
                    holder: false,
                },
            ],
        };
        let text = encode(&pr, &[]);
        assert_eq!(decode(&text), Ok((pr.clone(), vec![])));
        assert!(decode("something else\n").is_err());
        assert!(decode(&text.replace("reservation 1", "reservation 9")).is_err());
        assert!(decode(&text.replace("reg 00000000000000aa 1", "reg 00000000000000aa 0")).is_err(), "no holder");
        assert!(decode(&text.replace(" 1 2 - ", " 1 x - ")).is_err(), "a bad target port");
        assert!(decode(&text.replace("aptpl 1", "aptpl 2")).is_err());
        let shared = Persistent { aptpl: false, ..pr.clone() };
        let events = vec![
            PrEvent {
                seq: 3,
                to: AttentionTo { port: InitiatorPort::new("iqn.2026-12.test:a", 0x8000_0000_0001), target_port: None },
                asc: scsi::Asc::REGISTRATIONS_PREEMPTED,
            },
            PrEvent {
                seq: 4,
                to: AttentionTo {
                    port: InitiatorPort { name: "iqn.2026-12.test:b".into(), isid: None },
                    target_port: Some(3),
                },
                asc: scsi::Asc::RESERVATIONS_RELEASED,
            },
        ];
        let text_shared = encode(&shared, &events);
        assert!(text_shared.contains("ua 3 2a05 - 800000000001 iqn.2026-12.test:a\n"), "{text_shared}");
        assert_eq!(decode(&text_shared), Ok((shared, events)), "a redundant pair's copy, with its attentions");
        assert!(decode(&text_shared.replace("ua 4 ", "ua 2 ")).is_err(), "attentions out of order");
        assert_eq!(decode(&text.replace("aptpl 1\n", "")), Ok((pr, vec![])), "files from before the aptpl line");
    }
}
