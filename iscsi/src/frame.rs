//! Cutting a byte stream into PDUs (RFC 7143 11.1): BHS, AHS, header digest, data segment
//! padded to four bytes, data digest. Stateless: the transport keeps the bytes it has
//! received and asks [`Framer::parse`] for the next PDU; nothing is trusted before it is
//! checked, and every length is bounded.

use thiserror::Error;

use crate::bhs::{padded, Bhs, BHS_LEN};

/// Which digests the connection negotiated (CRC32C, RFC 7143 13.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    /// HeaderDigest=CRC32C.
    pub header: bool,
    /// DataDigest=CRC32C.
    pub data: bool,
}

/// Why the byte stream cannot be cut into a PDU. Every one of these ends the connection
/// (error recovery level 0).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The header digest does not match.
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest {
        /// What the header hashes to.
        computed: u32,
        /// What the PDU carried.
        received: u32,
    },
    /// The data digest does not match.
    #[error("data digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    DataDigest {
        /// What the data hashes to.
        computed: u32,
        /// What the PDU carried.
        received: u32,
    },
    /// A data segment longer than this side's MaxRecvDataSegmentLength.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataTooLong {
        /// The length the BHS gives.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Additional header segments whose lengths do not add up to TotalAHSLength.
    #[error("additional header segments do not fill TotalAHSLength ({total} bytes)")]
    BadAhs {
        /// TotalAHSLength in bytes.
        total: usize,
    },
}

impl FrameError {
    /// A fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::HeaderDigest { .. } => "header_digest",
            FrameError::DataDigest { .. } => "data_digest",
            FrameError::DataTooLong { .. } => "data_too_long",
            FrameError::BadAhs { .. } => "bad_ahs",
        }
    }
}

/// One PDU as framed: its BHS, additional header segments and data segment (no padding or
/// digests), all checked for length and digest but not yet for meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPdu {
    /// The Basic Header Segment.
    pub bhs: Bhs,
    /// Additional header segments (TotalAHSLength × 4 bytes).
    pub ahs: Vec<u8>,
    /// The data segment.
    pub data: Vec<u8>,
}

/// The framing rules of one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer {
    /// Digests in use.
    pub digests: Digests,
    /// Largest data segment accepted (this side's MaxRecvDataSegmentLength).
    pub max_data: usize,
}

/// The MaxRecvDataSegmentLength in force before one is negotiated (RFC 7143 13.12).
pub const DEFAULT_MAX_RECV_DATA: usize = 8192;

impl Default for Framer {
    fn default() -> Framer {
        Framer { digests: Digests::default(), max_data: DEFAULT_MAX_RECV_DATA }
    }
}

/// CRC32C as iSCSI uses it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

impl Framer {
    /// Bytes a PDU with this BHS takes on the wire in all, or an error for a data segment
    /// over the limit. Needs only the BHS, so a transport can wait for the rest.
    pub fn wire_len(&self, bhs: &Bhs) -> Result<usize, FrameError> {
        let data = bhs.data_len();
        if data > self.max_data {
            return Err(FrameError::DataTooLong { len: data, max: self.max_data });
        }
        let hd = if self.digests.header { 4 } else { 0 };
        let dd = if self.digests.data && data > 0 { 4 } else { 0 };
        Ok(BHS_LEN + bhs.ahs_len() + hd + padded(data) + dd)
    }

    /// The next PDU at the start of `buf` and the bytes it took, or `None` when `buf` does
    /// not hold all of it yet.
    pub fn parse(&self, buf: &[u8]) -> Result<Option<(RawPdu, usize)>, FrameError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let mut bhs = Bhs::default();
        bhs.0.copy_from_slice(&buf[..BHS_LEN]);
        let total = self.wire_len(&bhs)?;
        if buf.len() < total {
            return Ok(None);
        }
        let ahs_end = BHS_LEN + bhs.ahs_len();
        let mut at = ahs_end;
        if self.digests.header {
            let computed = crc32c(&buf[..ahs_end]);
            let received = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            if computed != received {
                return Err(FrameError::HeaderDigest { computed, received });
            }
            at += 4;
        }
        let ahs = buf[BHS_LEN..ahs_end].to_vec();
        check_ahs(&ahs)?;
        let n = bhs.data_len();
        let data = buf[at..at + n].to_vec();
        if self.digests.data && n > 0 {
            let computed = crc32c(&buf[at..at + padded(n)]);
            let d = at + padded(n);
            let received = u32::from_le_bytes([buf[d], buf[d + 1], buf[d + 2], buf[d + 3]]);
            if computed != received {
                return Err(FrameError::DataDigest { computed, received });
            }
        }
        Ok(Some((RawPdu { bhs, ahs, data }, total)))
    }

    /// The wire bytes of a PDU: `bhs` (its data segment length set from `data`, no AHS),
    /// the digests this framer uses, and `data` padded.
    pub fn emit(&self, bhs: Bhs, data: &[u8], out: &mut Vec<u8>) {
        self.emit_with(bhs, data.len(), out, |d| d.copy_from_slice(data));
    }

    /// [`Framer::emit`] of a `len`-byte data segment that `fill` writes in place, so data
    /// from elsewhere (a data area) is copied once, straight into the output.
    pub fn emit_with(&self, mut bhs: Bhs, len: usize, out: &mut Vec<u8>, fill: impl FnOnce(&mut [u8])) {
        bhs.set_data_len(len);
        bhs.0[4] = 0;
        out.extend_from_slice(&bhs.0);
        if self.digests.header {
            out.extend_from_slice(&crc32c(&bhs.0).to_le_bytes());
        }
        if len > 0 {
            let start = out.len();
            out.resize(start + padded(len), 0);
            fill(&mut out[start..start + len]);
            if self.digests.data {
                let digest = crc32c(&out[start..]);
                out.extend_from_slice(&digest.to_le_bytes());
            }
        }
    }
}

/// Checks that the additional header segments, each `AHSLength` (2 bytes, excluding the
/// 3-byte header and padding) + type + specific bytes, exactly fill `ahs`.
fn check_ahs(ahs: &[u8]) -> Result<(), FrameError> {
    let mut at = 0;
    while at < ahs.len() {
        if ahs.len() - at < 4 {
            return Err(FrameError::BadAhs { total: ahs.len() });
        }
        let len = usize::from(u16::from_be_bytes([ahs[at], ahs[at + 1]]));
        let seg = padded(3 + len);
        if len == 0 || seg > ahs.len() - at {
            return Err(FrameError::BadAhs { total: ahs.len() });
        }
        at += seg;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bhs::{field, Opcode};

    fn pdu(data: &[u8]) -> Bhs {
        let mut b = Bhs::new(Opcode::NopOut);
        b.set(field::ITT, 7);
        b.set_data_len(data.len());
        b
    }

    #[test]
    fn frames_round_trip_with_and_without_digests_and_wait_for_every_byte() {
        for digests in [Digests::default(), Digests { header: true, data: true }] {
            let f = Framer { digests, max_data: 8192 };
            let data = b"ping data";
            let mut wire = Vec::new();
            f.emit(pdu(data), data, &mut wire);
            let expected = 48 + if digests.header { 4 } else { 0 } + 12 + if digests.data { 4 } else { 0 };
            assert_eq!(wire.len(), expected);
            for cut in 0..wire.len() {
                assert_eq!(f.parse(&wire[..cut]).unwrap(), None, "{cut} bytes are not a PDU");
            }
            let (p, used) = f.parse(&wire).unwrap().unwrap();
            assert_eq!((used, &p.data[..], p.bhs.itt()), (wire.len(), &data[..], 7));
        }
    }

    #[test]
    fn a_flipped_bit_fails_its_digest() {
        let f = Framer { digests: Digests { header: true, data: true }, max_data: 8192 };
        let mut wire = Vec::new();
        f.emit(pdu(b"abcd"), b"abcd", &mut wire);
        let mut bad = wire.clone();
        bad[20] ^= 1;
        assert!(matches!(f.parse(&bad), Err(FrameError::HeaderDigest { .. })));
        let mut bad = wire.clone();
        bad[53] ^= 1;
        assert!(matches!(f.parse(&bad), Err(FrameError::DataDigest { .. })));
    }

    #[test]
    fn crc32c_is_the_castagnoli_polynomial() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }

    #[test]
    fn oversize_data_and_broken_ahs_are_refused_from_the_header_alone() {
        let f = Framer::default();
        let mut b = pdu(&[]);
        b.set_data_len(8193);
        assert_eq!(f.parse(&b.0), Err(FrameError::DataTooLong { len: 8193, max: 8192 }));
        let mut b = pdu(&[]);
        b.0[4] = 1; // 4 bytes of AHS
        let mut wire = b.0.to_vec();
        wire.extend_from_slice(&[0, 9, 1, 0]); // AHSLength 9 cannot fit in 4 bytes
        assert_eq!(f.parse(&wire), Err(FrameError::BadAhs { total: 4 }));
        let mut wire = b.0.to_vec();
        wire.extend_from_slice(&[0, 1, 2, 0]); // one byte of type-2 AHS: fits
        assert!(f.parse(&wire).unwrap().is_some());
    }
}

#[cfg(test)]
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The same property the `iscsi_pdu` fuzz target checks, on every test run: any bytes
        /// frame and parse without a panic, and a framed PDU uses no more than it was given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), header: bool, data: bool) {
            let f = Framer { digests: Digests { header, data }, max_data: 512 };
            if let Ok(Some((raw, used))) = f.parse(&bytes) {
                prop_assert!(used <= bytes.len());
                let _ = crate::Pdu::parse(raw);
            }
        }
    }
}
