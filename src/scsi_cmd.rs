//! `pangate scsi`: one SCSI command to a LUN over the rings.

use std::path::PathBuf;

use clap::{Args, Subcommand};
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
