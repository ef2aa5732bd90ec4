//! Mode pages: read-write error recovery (0x01), caching (0x08) and control (0x0A), with
//! MODE SENSE page controls and MODE SELECT validation (SPC-4 6.11-6.14, 7.5; SBC-3 6.4).

use crate::cdb::ModeSense;
use crate::config::LunConfig;
use crate::sense::Sense;

/// Page codes this target has.
pub const PAGES: [u8; 3] = [0x01, 0x08, 0x0A];

/// The values of the changeable fields of every page. Everything else is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// Caching page WCE: write cache enabled.
    pub write_cache: bool,
    /// Control page D_SENSE: report sense in descriptor format.
    pub descriptor_sense: bool,
    /// Control page SWP: software write protect; the medium refuses writes.
    pub software_write_protect: bool,
}

impl ModeState {
    /// Power-on defaults from the LUN's settings.
    pub fn defaults(cfg: &LunConfig) -> ModeState {
        ModeState { write_cache: cfg.write_cache, descriptor_sense: false, software_write_protect: false }
    }
}

fn page_bytes(code: u8, state: &ModeState, changeable: bool) -> Vec<u8> {
    match code {
        0x01 => {
            let mut p = vec![0u8; 12];
            p[0] = 0x01;
            p[1] = 10;
            if !changeable {
                p[2] = 0xC0; // AWRE, ARRE
            }
            p
        }
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 18;
            if changeable || state.write_cache {
                p[2] = 0x04; // WCE
            }
            p
        }
        0x0A => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0A;
            p[1] = 10;
            if changeable || state.descriptor_sense {
                p[2] = 0x04; // D_SENSE
            }
            if changeable || state.software_write_protect {
                p[4] = 0x08; // SWP
            }
            if !changeable {
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // busy timeout: unlimited
            }
            p
        }
        _ => Vec::new(),
    }
}

/// Renders a MODE SENSE response (header, block descriptor, pages) before truncation;
/// `read_only`, or software write protect in the current state, sets WP in the
/// device-specific parameter.
pub fn sense(
    req: &ModeSense,
    cfg: &LunConfig,
    read_only: bool,
    current: &ModeState,
    saved: &ModeState,
) -> Result<Vec<u8>, Sense> {
    let pages: Vec<u8> = match (req.page, req.subpage) {
        (0x3F, 0x00 | 0xFF) => PAGES.to_vec(),
        (p, 0x00) if PAGES.contains(&p) => vec![p],
        (p, _) if PAGES.contains(&p) || p == 0x3F => return Err(Sense::invalid_cdb_field(3, None)),
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    let defaults = ModeState::defaults(cfg);
    let (state, changeable) = match req.page_control {
        0 => (*current, false),
        1 => (*current, true),
        2 => (defaults, false),
        _ => (*saved, false),
    };
    let long = req.llbaa;
    let descriptor = if req.dbd {
        Vec::new()
    } else if long {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&cfg.blocks.to_be_bytes());
        d[12..16].copy_from_slice(&cfg.block_size.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let blocks = u32::try_from(cfg.blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&blocks.to_be_bytes());
        d[5..8].copy_from_slice(&cfg.block_size.to_be_bytes()[1..4]);
        d
    };
    // Device-specific parameter (SBC-3 6.5.1): WP when the LUN, or this initiator's map of
    // it, is read-only; DPOFUA (DPO and FUA supported).
    let device_specific = if read_only || current.software_write_protect { 0x80 } else { 0x00 } | 0x10;
    let mut body = descriptor.clone();
    for p in pages {
        body.extend(page_bytes(p, &state, changeable));
    }
    let mut out = if req.ten {
        let mut h = vec![0u8; 8];
        h[3] = device_specific;
        h[4] = u8::from(long);
        h[6..8].copy_from_slice(&(descriptor.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, device_specific, descriptor.len() as u8]
    };
    out.extend(body);
    if req.ten {
        let len = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out[0] = u8::try_from(out.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(out)
}

/// Applies a MODE SELECT parameter list to `state`, checking that only changeable fields
/// differ from the current values. Returns the new state; `state` is untouched on error.
pub fn select(ten: bool, params: &[u8], cfg: &LunConfig, state: &ModeState) -> Result<ModeState, Sense> {
    let header = if ten { 8 } else { 4 };
    if params.is_empty() {
        return Ok(*state);
    }
    if params.len() < header {
        return Err(Sense::parameter_list_length());
    }
    let bd_len = if ten { usize::from(u16::from_be_bytes([params[6], params[7]])) } else { usize::from(params[3]) };
    let long = ten && params[4] & 1 != 0;
    let bd_size = if long { 16 } else { 8 };
    if bd_len % bd_size != 0 {
        return Err(Sense::invalid_parameter(if ten { 6 } else { 3 }, None));
    }
    let pages_at = header.checked_add(bd_len).ok_or_else(Sense::parameter_list_length)?;
    if pages_at > params.len() {
        return Err(Sense::parameter_list_length());
    }
    // A block descriptor may restate the block length, never change it.
    for at in (header..pages_at).step_by(bd_size) {
        let d = &params[at..at + bd_size];
        let block_len = if long {
            u32::from_be_bytes([d[12], d[13], d[14], d[15]])
        } else {
            u32::from_be_bytes([0, d[5], d[6], d[7]])
        };
        if block_len != cfg.block_size {
            return Err(Sense::invalid_parameter((at + if long { 12 } else { 5 }) as u16, None));
        }
    }
    let mut next = *state;
    let mut at = pages_at;
    while at < params.len() {
        if at + 2 > params.len() {
            return Err(Sense::parameter_list_length());
        }
        let code = params[at] & 0x3F;
        if params[at] & 0x40 != 0 {
            return Err(Sense::invalid_parameter(at as u16, Some(6))); // no subpages
        }
        let current = page_bytes(code, state, false);
        if current.is_empty() {
            return Err(Sense::invalid_parameter(at as u16, Some(5)));
        }
        let len = usize::from(params[at + 1]) + 2;
        if len != current.len() {
            return Err(Sense::invalid_parameter((at + 1) as u16, None));
        }
        let end = at + len;
        if end > params.len() {
            return Err(Sense::parameter_list_length());
        }
        let given = &params[at..end];
        let mask = page_bytes(code, state, true);
        // Byte 0 carries the PS bit, which MODE SELECT ignores.
        for i in 1..len {
            if (given[i] ^ current[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_parameter((at + i) as u16, None));
            }
        }
        match code {
            0x08 => next.write_cache = given[2] & 0x04 != 0,
            0x0A => {
                next.descriptor_sense = given[2] & 0x04 != 0;
                next.software_write_protect = given[4] & 0x08 != 0;
            }
            _ => {}
        }
        at = end;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunIdentity;

    fn cfg() -> LunConfig {
        LunConfig::new(LunIdentity::new("m"), 512, 1 << 20).unwrap()
    }

    fn req(page: u8, pc: u8) -> ModeSense {
        ModeSense { ten: false, dbd: false, llbaa: false, page_control: pc, page, subpage: 0, alloc: 255 }
    }

    #[test]
    fn mode_sense6_all_pages_layout() {
        let c = cfg();
        let s = ModeState::defaults(&c);
        let b = sense(&req(0x3F, 0), &c, false, &s, &s).unwrap();
        assert_eq!(b[0] as usize, b.len() - 1);
        assert_eq!(b[2], 0x10);
        assert_eq!(b[3], 8);
        assert_eq!(&b[4..8], &2048u32.to_be_bytes());
        assert_eq!(&b[9..12], &[0, 2, 0]);
        assert_eq!(b.len(), 4 + 8 + 12 + 20 + 12);
        assert_eq!(b[12 + 12 + 2] & 0x04, 0x04); // WCE in the caching page
    }

    #[test]
    fn changeable_page_control_shows_wce_and_dsense_only() {
        let c = cfg();
        let s = ModeState { write_cache: false, descriptor_sense: false, software_write_protect: false };
        let b = sense(&ModeSense { dbd: true, ..req(0x08, 1) }, &c, false, &s, &s).unwrap();
        assert_eq!(&b[4..8], &[0x08, 18, 0x04, 0]);
    }

    #[test]
    fn select_changes_wce_and_refuses_fixed_fields() {
        let c = cfg();
        let s = ModeState::defaults(&c);
        let mut params = vec![0u8, 0, 0, 0];
        let mut page = page_bytes(0x08, &s, false);
        page[2] = 0;
        params.extend(&page);
        assert!(!select(false, &params, &c, &s).unwrap().write_cache);
        params[4 + 3] = 1;
        assert_eq!(select(false, &params, &c, &s), Err(Sense::invalid_parameter(7, None)));
    }

    #[test]
    fn select_rejects_unknown_page_and_short_list() {
        let c = cfg();
        let s = ModeState::defaults(&c);
        assert_eq!(select(false, &[0, 0, 0, 0, 0x1C, 10], &c, &s), Err(Sense::invalid_parameter(4, Some(5))));
        assert_eq!(select(true, &[0, 0, 0], &c, &s), Err(Sense::parameter_list_length()));
    }
}
