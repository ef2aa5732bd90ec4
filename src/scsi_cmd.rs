//! `pangate scsi`: one SCSI command to a LUN over the rings.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use gateway::ring::initiator::{Initiator, Response};
use serde_json::json;

use crate::NodeArgs;

#[derive(Debug, Args)]
pub struct ScsiArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Virtual target.
    #[arg(long, default_value_t = 0)]
    target: u16,
    /// Virtual LUN.
    #[arg(long)]
    lun: u16,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: ScsiCmd,
}

#[derive(Debug, Subcommand)]
enum ScsiCmd {
    /// Standard INQUIRY data.
    Inquiry,
    /// A VPD page (hex or decimal, e.g. 0x83).
    Vpd {
        /// Page code.
        page: String,
    },
    /// READ CAPACITY (16).
    Readcap,
    /// REPORT LUNS.
    Luns,
    /// REPORT TARGET PORT GROUPS, as `sg_rtpg` shows it: each group's ALUA state and ports.
    Rtpg,
    /// READ(16) COUNT blocks at LBA.
    Read {
        /// First block.
        lba: u64,
        /// Number of blocks.
        count: u32,
        /// Write the data here instead of a hex dump.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// WRITE(16) the contents of a file (whole blocks) at LBA.
    Write {
        /// First block.
        lba: u64,
        /// File with the data: whole blocks, unless --pad.
        #[arg(long = "in")]
        input: PathBuf,
        /// Pad a partial last block with zeros instead of refusing it.
        #[arg(long)]
        pad: bool,
        /// Force unit access.
        #[arg(long)]
        fua: bool,
        /// Use the staged BUF/TRAN path.
        #[arg(long)]
        staged: bool,
    },
    /// SYNCHRONIZE CACHE (16).
    Sync,
    /// UNMAP COUNT blocks at LBA.
    Unmap {
        /// First block.
        lba: u64,
        /// Number of blocks.
        count: u32,
    },
    /// REQUEST SENSE.
    Sense,
    /// PERSISTENT RESERVE IN, as `sg_persist --in` would send it.
    PrIn {
        /// Service action.
        #[arg(value_enum)]
        action: PrIn,
    },
    /// PERSISTENT RESERVE OUT, as `sg_persist --out` would send it.
    PrOut {
        /// Service action.
        #[arg(value_enum)]
        action: PrOut,
        /// The key this initiator is registered with (0 when it is not).
        #[arg(long, default_value = "0", value_parser = parse_key)]
        key: u64,
        /// The service action key: the new key to register, or the key to preempt.
        #[arg(long = "sa-key", default_value = "0", value_parser = parse_key)]
        sa_key: u64,
        /// Reservation type.
        #[arg(long = "type", value_enum, default_value = "we")]
        kind: PrKind,
        /// Keep the state across a restart (APTPL), with a register.
        #[arg(long)]
        aptpl: bool,
        /// Register through every target port.
        #[arg(long = "all-tg-pt")]
        all_tg_pt: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrIn {
    ReadKeys,
    ReadReservation,
    ReportCapabilities,
    ReadFullStatus,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrOut {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAbort,
    RegisterIgnore,
}

/// Reservation types by their `sg_persist` abbreviations.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrKind {
    /// Write Exclusive.
    We,
    /// Exclusive Access.
    Ea,
    /// Write Exclusive, Registrants Only.
    WeRo,
    /// Exclusive Access, Registrants Only.
    EaRo,
    /// Write Exclusive, All Registrants.
    WeAr,
    /// Exclusive Access, All Registrants.
    EaAr,
}

fn parse_key(s: &str) -> Result<u64, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?} is not a hexadecimal key: {e}"))
}

fn type_name(code: u8) -> &'static str {
    match code {
        1 => "write-exclusive",
        3 => "exclusive-access",
        5 => "write-exclusive-registrants-only",
        6 => "exclusive-access-registrants-only",
        7 => "write-exclusive-all-registrants",
        8 => "exclusive-access-all-registrants",
        _ => "none",
    }
}

/// Decodes PERSISTENT RESERVE IN data into JSON and a line or more for people.
fn pr_in_report(action: PrIn, d: &[u8]) -> (serde_json::Value, String) {
    let be32 = |at: usize| d.get(at..at + 4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
    let be64 = |at: usize| d.get(at..at + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
    let generation = be32(0);
    match action {
        PrIn::ReadKeys => {
            let n = (be32(4) as usize / 8).min(d.len().saturating_sub(8) / 8);
            let keys: Vec<String> = (0..n).map(|k| format!("{:#x}", be64(8 + 8 * k))).collect();
            let h = format!("generation {generation:#x}, {} key(s): {}", keys.len(), keys.join(" "));
            (json!({"generation": generation, "keys": keys}), h)
        }
        PrIn::ReadReservation => {
            if be32(4) < 16 || d.len() < 24 {
                return (
                    json!({"generation": generation, "reservation": null}),
                    format!("generation {generation:#x}, no reservation"),
                );
            }
            let (key, kind) = (be64(8), type_name(d[21] & 0x0F));
            let h = format!("generation {generation:#x}, key {key:#x}, type {kind}");
            (json!({"generation": generation, "reservation": {"key": format!("{key:#x}"), "type": kind}}), h)
        }
        PrIn::ReportCapabilities => {
            let b = |i: usize, bit: u8| d.get(i).is_some_and(|v| v & (1 << bit) != 0);
            let v = json!({"crh": b(2, 4), "sip_c": b(2, 3), "atp_c": b(2, 2), "ptpl_c": b(2, 0),
                "tmv": b(3, 7), "ptpl_a": b(3, 0), "type_mask": format!("{:02x}{:02x}", d.get(4).copied().unwrap_or(0), d.get(5).copied().unwrap_or(0))});
            let h = v.to_string();
            (v, h)
        }
        PrIn::ReadFullStatus => {
            let end = (8 + be32(4) as usize).min(d.len());
            let (mut at, mut regs, mut lines) = (8, Vec::new(), vec![format!("generation {generation:#x}")]);
            while at + 24 <= end {
                let len = be32(at + 20) as usize;
                let tid = d.get(at + 24..(at + 24 + len).min(end)).unwrap_or(&[]);
                let port = scsi::InitiatorPort::parse_transport_id(tid).map(|(p, _)| p);
                let (key, holder, all_tg_pt) = (be64(at), d[at + 12] & 1 != 0, d[at + 12] & 2 != 0);
                let kind = if holder { type_name(d[at + 13] & 0x0F) } else { "none" };
                let target_port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
                let name = port.as_ref().map_or_else(String::new, |p| p.name.clone());
                let isid = port.and_then(|p| p.isid).map(|i| format!("{i:012x}"));
                lines.push(format!(
                    "key {key:#x} {name} isid {} target port {target_port}{}{}",
                    isid.as_deref().unwrap_or("-"),
                    if all_tg_pt { " (all target ports)" } else { "" },
                    if holder { format!(", holds {kind}") } else { String::new() }
                ));
                regs.push(json!({"key": format!("{key:#x}"), "holder": holder, "all_tg_pt": all_tg_pt,
                    "type": kind, "target_port": target_port, "initiator": name, "isid": isid}));
                at += 24 + len;
            }
            (json!({"generation": generation, "registrations": regs}), lines.join("\n"))
        }
    }
}

fn status_text(r: &Response) -> String {
    if r.good() {
        return "GOOD".into();
    }
    match scsi::sense::parse_sense(&r.sense) {
        Some((key, asc, info)) => format!(
            "status {:#04x}, sense key {key:#x} ASC/ASCQ {:02x}/{:02x}{}",
            r.status,
            asc.0,
            asc.1,
            info.map(|i| format!(" info {i}")).unwrap_or_default()
        ),
        None => format!("status {:#04x}", r.status),
    }
}

fn hexdump(data: &[u8]) -> String {
    data.chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let hex: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = c.iter().map(|&b| if (0x20..0x7F).contains(&b) { b as char } else { '.' }).collect();
            format!("{:08x}  {:<48} {text}", i * 16, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn trimmed(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

pub fn run(a: ScsiArgs) -> anyhow::Result<()> {
    let mut i: Initiator = a.node.connect(256, 64 << 20)?;
    let (t, l) = (a.target, a.lun);
    // A fresh nexus starts with a power-on unit attention; consume it quietly.
    i.execute(t, l, &[0; 6], gateway::ring::initiator::Data::None)?;
    let (resp, value, human) = match &a.cmd {
        ScsiCmd::Inquiry => {
            let (r, d) = i.inquiry(t, l, None)?;
            let v = if d.len() >= 36 {
                json!({"peripheral": d[0], "vendor": trimmed(&d[8..16]), "product": trimmed(&d[16..32]), "revision": trimmed(&d[32..36])})
            } else {
                json!({})
            };
            let h = format!(
                "{} {} {}",
                v["vendor"].as_str().unwrap_or(""),
                v["product"].as_str().unwrap_or(""),
                v["revision"].as_str().unwrap_or("")
            );
            (r, v, h)
        }
        ScsiCmd::Vpd { page } => {
            let code = if let Some(h) = page.strip_prefix("0x") { u8::from_str_radix(h, 16)? } else { page.parse()? };
            let (r, d) = i.inquiry(t, l, Some(code))?;
            (r, json!({"page": code, "data": d.iter().map(|b| format!("{b:02x}")).collect::<String>()}), hexdump(&d))
        }
        ScsiCmd::Readcap => {
            let (r, cap) = i.read_capacity(t, l)?;
            let (blocks, bs) = cap.unwrap_or((0, 0));
            (
                r,
                json!({"blocks": blocks, "block_size": bs, "bytes": blocks * u64::from(bs)}),
                format!("{blocks} blocks of {bs} bytes ({} MiB)", (blocks * u64::from(bs)) >> 20),
            )
        }
        ScsiCmd::Luns => {
            let (r, d) = i.data_in(t, l, &[0xA0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 65536)?;
            let n = d.len().saturating_sub(8) / 8;
            let luns: Vec<u16> =
                (0..n).filter_map(|k| scsi::report::decode_lun(d[8 + 8 * k..16 + 8 * k].try_into().ok()?)).collect();
            let h = luns.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" ");
            (r, json!({"luns": luns}), h)
        }
        ScsiCmd::Rtpg => {
            let (r, d) = i.data_in(t, l, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], 4096)?;
            let groups = port_groups(&d);
            let h = groups
                .iter()
                .map(|g| format!("group {} {}{}, ports {:?}", g.0, g.1, if g.2 { " (preferred)" } else { "" }, g.3))
                .collect::<Vec<_>>()
                .join("\n");
            let v: Vec<_> =
                groups.iter().map(|g| json!({"group": g.0, "state": g.1, "preferred": g.2, "ports": g.3})).collect();
            (r, json!({"groups": v}), h)
        }
        ScsiCmd::Read { lba, count, out } => {
            let bs = i.luns().iter().find(|x| x.target == t && x.lun == l).map_or(512, |x| x.block_size);
            let (r, d) = i.read(t, l, *lba, count * bs)?;
            if let Some(path) = out {
                std::fs::write(path, &d)?;
            }
            let h = if out.is_some() { format!("{} bytes", d.len()) } else { hexdump(&d) };
            (r, json!({"bytes": d.len()}), h)
        }
        ScsiCmd::Write { lba, input, pad, fua, staged } => {
            let bs = i.luns().iter().find(|x| x.target == t && x.lun == l).map_or(512, |x| x.block_size) as usize;
            let mut data = std::fs::read(input)?;
            let partial = data.len() % bs;
            if partial != 0 {
                if !pad {
                    anyhow::bail!(
                        "{} is {} bytes, not a whole number of {bs}-byte blocks ({partial} bytes over); \
                         give --pad to pad the last block with zeros",
                        input.display(),
                        data.len()
                    );
                }
                data.resize(data.len() + bs - partial, 0);
            }
            let r = i.write(t, l, *lba, &data, *fua, *staged)?;
            (r, json!({"bytes": data.len(), "blocks": data.len() / bs}), format!("{} bytes", data.len()))
        }
        ScsiCmd::Sync => (i.flush(t, l)?, json!({}), String::new()),
        ScsiCmd::Unmap { lba, count } => (i.unmap(t, l, *lba, *count)?, json!({}), String::new()),
        ScsiCmd::PrIn { action } => {
            let sa = match action {
                PrIn::ReadKeys => scsi::pr::sa_in::READ_KEYS,
                PrIn::ReadReservation => scsi::pr::sa_in::READ_RESERVATION,
                PrIn::ReportCapabilities => scsi::pr::sa_in::REPORT_CAPABILITIES,
                PrIn::ReadFullStatus => scsi::pr::sa_in::READ_FULL_STATUS,
            };
            let (r, d) = i.data_in(t, l, &scsi::build::persistent_reserve_in(sa, 8192), 8192)?;
            let (v, h) = pr_in_report(*action, &d);
            (r, v, h)
        }
        ScsiCmd::PrOut { action, key, sa_key, kind, aptpl, all_tg_pt } => {
            use scsi::pr::sa_out;
            let sa = match action {
                PrOut::Register => sa_out::REGISTER,
                PrOut::Reserve => sa_out::RESERVE,
                PrOut::Release => sa_out::RELEASE,
                PrOut::Clear => sa_out::CLEAR,
                PrOut::Preempt => sa_out::PREEMPT,
                PrOut::PreemptAbort => sa_out::PREEMPT_AND_ABORT,
                PrOut::RegisterIgnore => sa_out::REGISTER_AND_IGNORE,
            };
            let code = match kind {
                PrKind::We => 1,
                PrKind::Ea => 3,
                PrKind::WeRo => 5,
                PrKind::EaRo => 6,
                PrKind::WeAr => 7,
                PrKind::EaAr => 8,
            };
            let p = scsi::build::persistent_reserve_out_params(*key, *sa_key, *all_tg_pt, *aptpl);
            let r = i.data_out(t, l, &scsi::build::persistent_reserve_out(sa, code, p.len() as u32), &p)?;
            (r, json!({}), String::new())
        }
        ScsiCmd::Sense => {
            let (r, d) = i.data_in(t, l, &[0x03, 0, 0, 0, 252, 0], 252)?;
            let parsed = scsi::sense::parse_sense(&d);
            let h = parsed
                .map(|(k, a, _)| format!("sense key {k:#x} ASC/ASCQ {:02x}/{:02x}", a.0, a.1))
                .unwrap_or_default();
            // The REQUEST SENSE data is the command's data-in; "sense" stays the (empty) sense
            // of its own status, as for every command.
            (r, json!({"sense_data": d.iter().map(|b| format!("{b:02x}")).collect::<String>()}), h)
        }
    };
    let ok = resp.good();
    if a.json {
        let mut v = value;
        v["status"] = json!(resp.status);
        v["sense"] = json!(resp.sense.iter().map(|b| format!("{b:02x}")).collect::<String>());
        v["residual"] = json!(resp.residual);
        println!("{v}");
    } else {
        println!("{}", status_text(&resp));
        if ok && !human.is_empty() {
            println!("{human}");
        }
    }
    if !ok {
        anyhow::bail!("command failed: {}", status_text(&resp));
    }
    Ok(())
}

/// The target port groups of REPORT TARGET PORT GROUPS data (length-only format): id,
/// asymmetric access state, PREF, relative target ports.
fn port_groups(d: &[u8]) -> Vec<(u16, &'static str, bool, Vec<u16>)> {
    let end = d.get(..4).map_or(0, |b| 4 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).min(d.len());
    let mut groups = Vec::new();
    let mut at = 4;
    while at + 8 <= end {
        let state = match d[at] & 0x0F {
            0x0 => "active/optimized",
            0x1 => "active/non-optimized",
            0x2 => "standby",
            0x3 => "unavailable",
            0xE => "offline",
            0xF => "transitioning",
            _ => "reserved",
        };
        let count = usize::from(d[at + 7]);
        let ports = (0..count)
            .filter_map(|k| d.get(at + 8 + 4 * k + 2..at + 8 + 4 * k + 4))
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect();
        groups.push((u16::from_be_bytes([d[at + 2], d[at + 3]]), state, d[at] & 0x80 != 0, ports));
        at += 8 + 4 * count;
    }
    groups
}
