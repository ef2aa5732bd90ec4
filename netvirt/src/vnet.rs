//! The virtio-net header that TAP devices (`IFF_VNET_HDR`) and packet sockets
//! (`PACKET_VNET_HDR`) put in front of each frame, and software segmentation and checksum
//! completion for ports that cannot take large segments whole. Sans-IO.
//!
//! A TCP stream between two TAP ports travels as 64 KiB super-frames with a partial
//! checksum; only a shared-memory ring port, whose slots hold one MTU-sized frame, needs
//! them cut into segments here.

/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, stored at `csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO; never enabled by pangate).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` flag.
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` and friends.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint; pangate finds the real one itself).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

/// Why a frame could not be segmented or checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// GSO type pangate does not segment.
    #[error("unsupported GSO type {0:#x}")]
    GsoType(u8),
    /// Headers that do not parse or do not fit the frame.
    #[error("GSO frame with malformed headers")]
    Headers,
    /// Checksum position outside the frame.
    #[error("checksum offsets outside the frame")]
    Checksum,
}

impl VnetHdr {
    /// Decodes a header (little-endian, as for virtio 1.0 and TAP on little-endian hosts).
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) }
    }

    /// Encodes the header.
    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether the frame is a super-frame to be cut into segments.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Length of the longest frame on the wire that `frame` stands for: itself, or, for a
    /// super-frame, its headers plus one segment's payload. Malformed super-frames count
    /// as their full length, so the MTU check drops them.
    pub fn wire_len(&self, frame: &[u8]) -> usize {
        if !self.is_gso() {
            return frame.len();
        }
        match headers_len(frame) {
            Some((_, l4_end)) => frame.len().min(l4_end + usize::from(self.gso_size)),
            None => frame.len(),
        }
    }
}

/// For an Ethernet/IP/TCP frame: (offset of the IP header, end of the TCP header).
fn headers_len(frame: &[u8]) -> Option<(usize, usize)> {
    let l3 = 14;
    let et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l4 = match et {
        0x0800 => {
            let ihl = usize::from(frame.get(l3)? & 0x0f) * 4;
            if ihl < 20 || frame.get(l3 + 9) != Some(&6) {
                return None;
            }
            l3 + ihl
        }
        0x86dd => {
            // No extension headers: Linux GSO frames from a TAP's stack have none here.
            if frame.get(l3 + 6) != Some(&6) {
                return None;
            }
            l3 + 40
        }
        _ => return None,
    };
    let doff = usize::from(frame.get(l4 + 12)? >> 4) * 4;
    if doff < 20 || l4 + doff > frame.len() {
        return None;
    }
    Some((l3, l4 + doff))
}

/// Ones'-complement sum of `data` added to `acc` (not folded).
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Completes a partial checksum (`F_NEEDS_CSUM`) in place, for a port that cannot.
pub fn finish_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() || start > frame.len() {
        return Err(OffloadError::Checksum);
    }
    // The field holds the pseudo-header sum the sender's stack put there.
    let sum = fold(sum16(0, &frame[start..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Cuts a TCP super-frame into wire frames with complete checksums, calling `emit` with
/// each. A frame that is not a super-frame is passed through with its checksum completed.
/// `scratch` is reused between calls to avoid allocating.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    if !hdr.is_gso() {
        scratch.clear();
        scratch.extend_from_slice(frame);
        finish_checksum(hdr, scratch)?;
        emit(scratch);
        return Ok(());
    }
    let kind = hdr.gso_type & !GSO_ECN;
    if kind != GSO_TCPV4 && kind != GSO_TCPV6 {
        return Err(OffloadError::GsoType(hdr.gso_type));
    }
    let (l3, l4_end) = headers_len(frame).ok_or(OffloadError::Headers)?;
    let v4 = u16::from_be_bytes([frame[12], frame[13]]) == 0x0800;
    if v4 != (kind == GSO_TCPV4) || hdr.gso_size == 0 {
        return Err(OffloadError::Headers);
    }
    let l4 = if v4 { l3 + usize::from(frame[l3] & 0x0f) * 4 } else { l3 + 40 };
    let mss = usize::from(hdr.gso_size);
    let payload = &frame[l4_end..];
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    let flags0 = frame[l4 + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&frame[..l4_end]);
        scratch.extend_from_slice(chunk);
        let s = &mut scratch[..];
        let l4_len = s.len() - l4;
        if v4 {
            let total = (s.len() - l3) as u16;
            s[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            s[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            s[l3 + 10..l3 + 12].fill(0);
            let c = fold(sum16(0, &s[l3..l4]));
            s[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            s[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        s[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        s[l4 + 13] = flags;
        s[l4 + 16..l4 + 18].fill(0);
        let mut acc = if v4 { sum16(0, &s[l3 + 12..l3 + 20]) } else { sum16(0, &s[l3 + 8..l3 + 40]) };
        acc += 6 + l4_len as u32;
        let c = fold(sum16(acc, &s[l4..]));
        s[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        emit(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_frame(v6: bool, payload: usize) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
        } else {
            b.ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        };
        let b = b.tcp(40000, 5201, 1000, 65535).psh().ack(7);
        let data: Vec<u8> = (0..payload).map(|i| (i * 7) as u8).collect();
        let mut f = Vec::new();
        b.write(&mut f, &data).unwrap();
        f
    }

    fn check_segments(v6: bool) {
        let frame = tcp_frame(v6, 5000);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: 0,
            gso_size: 1448,
            csum_start: 0,
            csum_offset: 0,
        };
        let hl = if v6 { 14 + 40 + 20 } else { 14 + 20 + 20 };
        assert_eq!(hdr.wire_len(&frame), hl + 1448);
        let mut segs = Vec::new();
        segment(&hdr, &frame, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 4);
        let mut data = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = p.transport else { panic!("no TCP") };
            assert_eq!(tcp.sequence_number(), 1000 + (i as u32) * 1448);
            assert_eq!(tcp.psh(), i == 3, "PSH only on the last segment");
            let expect = match &p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
                    tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    tcp.to_header().calc_checksum_ipv6(&ip.header().to_header(), tcp.payload()).unwrap()
                }
                _ => panic!("no IP"),
            };
            assert_eq!(tcp.checksum(), expect);
            assert!(s.len() <= hl + 1448);
            data.extend_from_slice(tcp.payload());
        }
        assert_eq!(data, frame[hl..]);
    }

    #[test]
    fn tcp_super_frames_become_valid_segments() {
        check_segments(false);
        check_segments(true);
    }

    #[test]
    fn partial_checksums_are_completed() {
        let frame = tcp_frame(false, 100);
        let good = frame.clone();
        let mut partial = frame.clone();
        // What a stack hands over: the pseudo-header sum in the checksum field.
        let l4 = 14 + 20;
        let mut acc = sum16(0, &partial[14 + 12..14 + 20]);
        acc += 6 + (partial.len() - l4) as u32;
        let pseudo = !fold(acc);
        partial[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: 16, ..VnetHdr::default() };
        finish_checksum(&hdr, &mut partial).unwrap();
        assert_eq!(partial, good);
        let bad = VnetHdr { csum_start: 4000, ..hdr };
        assert_eq!(finish_checksum(&bad, &mut partial), Err(OffloadError::Checksum));
    }

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let h = VnetHdr { flags: 1, gso_type: GSO_TCPV4, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        assert_eq!(VnetHdr::parse(&h.emit()), h);
        let mut out = 0;
        let r = segment(&VnetHdr { gso_type: GSO_UDP, ..h }, &[0u8; 100], &mut Vec::new(), |_| out += 1);
        assert_eq!(r, Err(OffloadError::GsoType(GSO_UDP)));
        assert_eq!(segment(&h, &[0u8; 30], &mut Vec::new(), |_| out += 1), Err(OffloadError::Headers));
        assert_eq!(out, 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_offload_requests_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400), h in proptest::array::uniform10(proptest::num::u8::ANY)) {
            let hdr = VnetHdr::parse(&h);
            let _ = hdr.wire_len(&bytes);
            let _ = segment(&hdr, &bytes, &mut Vec::new(), |_| {});
            let mut b = bytes.clone();
            let _ = finish_checksum(&hdr, &mut b);
        }
    }
}
