//! Gathering one command's data-out: immediate data, then the unsolicited sequence up to
//! FirstBurstLength, then one solicited sequence per R2T. Data PDUs and sequences are in
//! order (DataPDUInOrder and DataSequenceInOrder are Yes), so every Data-Out must start
//! where the last ended and carry the next DataSN of its sequence.

use super::Violation;
use crate::pdu::{DataOut, RESERVED_TAG};

/// The R2T outstanding: its tag and where its sequence ends.
#[derive(Debug, Clone, Copy)]
struct Solicited {
    ttt: u32,
    end: u32,
}

/// What to do next with a command gathering data.
#[derive(Debug)]
pub(super) enum Next {
    /// More data-out is on its way.
    Wait,
    /// Everything the initiator sends unasked has come; answer CHECK CONDITION with this.
    Refuse(scsi::Sense),
    /// All data is here.
    Run(Vec<u8>),
    /// Ask for this range with an R2T.
    Solicit { offset: u32, len: u32 },
}

/// A command's data-out so far.
#[derive(Debug)]
pub(super) struct Collect {
    edtl: u32,
    unsolicited_end: u32,
    received: u32,
    /// Set when the command will be refused: the data is counted but not kept.
    refuse: Option<scsi::Sense>,
    data: Vec<u8>,
    /// The DataSN the next Data-Out of the current sequence must carry.
    data_sn: u32,
    r2t: Option<Solicited>,
    r2t_sn: u32,
}

impl Collect {
    /// A command expecting `edtl` bytes, of which `unsolicited` (immediate data
    /// included) come without an R2T; `immediate` came with the command.
    pub(super) fn new(edtl: u32, unsolicited: u32, refuse: Option<scsi::Sense>, immediate: Vec<u8>) -> Collect {
        let received = immediate.len() as u32;
        let data = if refuse.is_some() {
            Vec::new()
        } else {
            let mut d = immediate;
            d.reserve_exact(edtl as usize - d.len());
            d
        };
        Collect {
            edtl,
            unsolicited_end: unsolicited.max(received),
            received,
            refuse,
            data,
            data_sn: 0,
            r2t: None,
            r2t_sn: 0,
        }
    }

    /// Takes one Data-Out, checking it belongs exactly here.
    pub(super) fn take(&mut self, d: &DataOut) -> Result<(), Violation> {
        let bad = |what: String| Err(Violation::DataOut { itt: d.itt, what });
        let end = if d.ttt == RESERVED_TAG {
            if self.received >= self.unsolicited_end {
                return bad("unsolicited data past FirstBurstLength or the F bit".into());
            }
            self.unsolicited_end
        } else {
            match self.r2t {
                Some(s) if s.ttt == d.ttt => s.end,
                _ => return bad(format!("target transfer tag {:#x} names no R2T outstanding", d.ttt)),
            }
        };
        if d.data_sn != self.data_sn {
            return Err(Violation::DataSn { itt: d.itt, expected: self.data_sn, got: d.data_sn });
        }
        if d.offset != self.received {
            return bad(format!("offset {} where {} was next", d.offset, self.received));
        }
        let len = d.data.len() as u32;
        if len == 0 || u64::from(self.received) + u64::from(len) > u64::from(end) {
            return bad(format!("{len} bytes at offset {} overrun the sequence ending at {end}", d.offset));
        }
        let ends = self.received + len == end;
        if ends != d.final_bit {
            return bad(if ends {
                "sequence complete without the F bit".into()
            } else {
                "F bit before the end of its sequence".into()
            });
        }
        if self.refuse.is_none() {
            self.data.extend_from_slice(&d.data);
        }
        self.received += len;
        self.data_sn += 1;
        if ends {
            self.data_sn = 0;
            self.r2t = None;
        }
        Ok(())
    }

    /// What the command needs now.
    pub(super) fn next(&mut self, max_burst: u32) -> Next {
        if self.received < self.unsolicited_end || self.r2t.is_some() {
            return Next::Wait;
        }
        if let Some(sense) = self.refuse.take() {
            return Next::Refuse(sense);
        }
        if self.received == self.edtl {
            return Next::Run(std::mem::take(&mut self.data));
        }
        Next::Solicit { offset: self.received, len: (self.edtl - self.received).min(max_burst.max(1)) }
    }

    /// Records the R2T sent for `[offset, offset + len)` with tag `ttt`; returns its R2TSN.
    pub(super) fn solicited(&mut self, ttt: u32, offset: u32, len: u32) -> u32 {
        self.r2t = Some(Solicited { ttt, end: offset + len });
        self.data_sn = 0;
        let sn = self.r2t_sn;
        self.r2t_sn += 1;
        sn
    }
}
