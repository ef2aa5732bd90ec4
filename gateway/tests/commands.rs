//! Byte-fixture tests: every supported command's good path and each distinct error, through
//! the LUN driver on the RAM engine.

mod support;

use gateway::engine::RamEngine;
use gateway::lun::{Finished, LunDriver};
use scsi::build::unmap_list;
use scsi::Asc;
use support::*;

// ---- TEST UNIT READY, REQUEST SENSE, unit attentions -------------------------------------

#[test]
fn test_unit_ready_reports_power_on_once_per_initiator() {
    let mut d = ram_lun();
    expect_good(&run(&mut d, &[0; 6], &[]));
    let f = d.run(2, &[0], &[0; 6], &[]).unwrap();
    expect_sense(&f, 0x6, Asc::POWER_ON_RESET);
    expect_good(&d.run(2, &[0], &[0; 6], &[]).unwrap());
}

#[test]
fn test_unit_ready_with_naca_is_invalid() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &[0, 0, 0, 0, 0, 0x04], &[]), 5);
}

#[test]
fn request_sense_returns_and_clears_pending_attention() {
    let mut d = ram_lun();
    let f = d.run(7, &[0], &[0x03, 0, 0, 0, 252, 0], &[]).unwrap();
    expect_good(&f);
    assert_eq!(f.data()[0], 0x70);
    assert_eq!((f.data()[2], f.data()[12], f.data()[13]), (0x6, 0x29, 0x00));
    let f = d.run(7, &[0], &[0x03, 0, 0, 0, 252, 0], &[]).unwrap();
    assert_eq!((f.data()[2], f.data()[12]), (0x0, 0x00), "nothing pending: NO SENSE");
}

#[test]
fn request_sense_descriptor_format_and_truncation() {
    let mut d = ram_lun();
    let f = run(&mut d, &[0x03, 0x01, 0, 0, 252, 0], &[]);
    assert_eq!(f.data()[0], 0x72);
    let f = run(&mut d, &[0x03, 0, 0, 0, 8, 0], &[]);
    assert_eq!(f.data().len(), 8);
}

#[test]
fn capacity_change_and_lun_reset_raise_unit_attentions() {
    let mut d = ram_lun();
    d.unit_mut().set_capacity(1024);
    expect_sense(&run(&mut d, &[0; 6], &[]), 0x6, Asc::CAPACITY_CHANGED);
    let f = run(&mut d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(&f.data()[0..4], &1023u32.to_be_bytes());
    d.unit_mut().reset();
    expect_sense(&run(&mut d, &[0; 6], &[]), 0x6, Asc::LUN_RESET);
    expect_good(&run(&mut d, &[0; 6], &[]));
}

// ---- INQUIRY -----------------------------------------------------------------------------

#[test]
fn inquiry_standard_truncates_to_allocation_length() {
    let mut d = ram_lun();
    let f = run(&mut d, &[0x12, 0, 0, 0, 36, 0], &[]);
    expect_good(&f);
    assert_eq!(f.data().len(), 36);
    assert_eq!(&f.data()[8..16], b"PANGATE ");
    let f = run(&mut d, &[0x12, 0, 0, 0x01, 0x00, 0], &[]);
    assert_eq!(f.data().len(), 96);
}

#[test]
fn inquiry_is_not_blocked_by_unit_attention() {
    let mut d = ram_lun();
    let f = d.run(9, &[0], &[0x12, 0, 0, 0, 36, 0], &[]).unwrap();
    expect_good(&f);
    expect_sense(&d.run(9, &[0], &[0; 6], &[]).unwrap(), 0x6, Asc::POWER_ON_RESET);
}

#[test]
fn inquiry_vpd_pages() {
    let mut d = ram_lun();
    for page in [0x00u8, 0x80, 0x83, 0xB0, 0xB1, 0xB2] {
        let f = run(&mut d, &[0x12, 1, page, 0x10, 0, 0], &[]);
        expect_good(&f);
        assert_eq!(f.data()[1], page);
        let len = u16::from_be_bytes([f.data()[2], f.data()[3]]) as usize;
        assert_eq!(f.data().len(), len + 4, "page {page:#x}");
    }
    let serial = run(&mut d, &[0x12, 1, 0x80, 0, 255, 0], &[]);
    let again = ram_lun().run(I, &[0], &[0x12, 1, 0x80, 0, 255, 0], &[]).unwrap();
    assert_eq!(serial.data(), again.data(), "identity is stable across restarts");
}

#[test]
fn inquiry_errors() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &[0x12, 1, 0x99, 0, 255, 0], &[]), 2);
    expect_invalid_field(&run(&mut d, &[0x12, 0, 0x80, 0, 255, 0], &[]), 2);
    expect_invalid_field(&run(&mut d, &[0x12, 0x02, 0, 0, 255, 0], &[]), 1);
}

// ---- READ CAPACITY -----------------------------------------------------------------------

#[test]
fn read_capacity_10_and_16() {
    let mut d = ram_lun();
    let f = run(&mut d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(f.data(), &[0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00]);
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[13] = 32;
    let f = run(&mut d, &c, &[]);
    assert_eq!(&f.data()[0..12], &[0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]);
    assert_eq!((f.data()[13], f.data()[14]), (0, 0xC0), "one logical block per physical block; LBPME, LBPRZ");
    c[13] = 12;
    assert_eq!(run(&mut d, &c, &[]).data().len(), 12);
}

#[test]
fn read_capacity_errors() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]), 2);
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x1F;
    expect_invalid_field(&run(&mut d, &c, &[]), 1);
}

// ---- READ / WRITE ------------------------------------------------------------------------

#[test]
fn write_and_read_every_cdb_size() {
    let mut d = ram_lun();
    let data = pattern(1024, 1);
    // WRITE(6) at LBA 3, READ(6) back.
    expect_good(&run(&mut d, &[0x0A, 0, 0, 3, 2, 0], &data));
    let f = run(&mut d, &[0x08, 0, 0, 3, 2, 0], &[]);
    assert_eq!(f.data(), &data[..]);
    // (10)
    expect_good(&run(&mut d, &cdb10(0x2A, 0x08, 10, 2), &data));
    assert_eq!(run(&mut d, &cdb10(0x28, 0x10, 10, 2), &[]).data(), &data[..]);
    // (12)
    let mut w12 = [0u8; 12];
    w12[0] = 0xAA;
    w12[5] = 20;
    w12[9] = 2;
    expect_good(&run(&mut d, &w12, &data));
    w12[0] = 0xA8;
    assert_eq!(run(&mut d, &w12, &[]).data(), &data[..]);
    // (16) with FUA
    expect_good(&run(&mut d, &rw16(0x8A, 2046, 2, true), &data));
    assert_eq!(read(&mut d, 2046, 2), data);
}

#[test]
fn zero_length_transfers_are_good() {
    let mut d = ram_lun();
    let f = run(&mut d, &cdb10(0x28, 0, 5, 0), &[]);
    expect_good(&f);
    assert!(f.data().is_empty());
    expect_good(&run(&mut d, &cdb10(0x2A, 0, 5, 0), &[]));
}

#[test]
fn read_write_range_and_limit_errors() {
    let mut d = ram_lun();
    expect_sense(&run(&mut d, &rw16(0x88, 2047, 2, false), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_sense(&run(&mut d, &rw16(0x88, u64::MAX, 1, false), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_sense(&run(&mut d, &cdb10(0x28, 0, 2048, 0), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_sense(&run(&mut d, &[0x08, 0x1F, 0xFF, 0xFF, 1, 0], &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    // Over the Block Limits maximum transfer (8 MiB = 16384 blocks).
    expect_invalid_field(&run(&mut d, &rw16(0x88, 0, 16385, false), &[]), 10);
    // RDPROTECT is not supported.
    expect_invalid_field(&run(&mut d, &cdb10(0x28, 0x20, 0, 1), &[]), 1);
}

/// ILLEGAL REQUEST / INVALID FIELD IN CDB with no field pointer: the data-out is not the
/// length the CDB gives.
#[track_caller]
fn expect_length_mismatch(f: &Finished) {
    expect_sense(f, 0x5, Asc::INVALID_FIELD_IN_CDB);
    assert_eq!(f.completion.sense[15] & 0x80, 0, "no field pointer: {:02x?}", f.completion.sense);
}

#[test]
fn write_without_exactly_its_data_out_is_refused() {
    let mut d = ram_lun();
    expect_length_mismatch(&run(&mut d, &cdb10(0x2A, 0, 0, 2), &[0; 512]));
    expect_length_mismatch(&run(&mut d, &cdb10(0x2A, 0, 0, 1), &[0; 1024]));
    // Nothing was written by either.
    assert!(read(&mut d, 0, 2).iter().all(|&b| b == 0));
}

#[test]
fn data_out_length_is_checked_before_anything_else() {
    let mut d = ram_lun();
    // COMPARE AND WRITE with NUMBER OF LOGICAL BLOCKS 0 and 256 KiB of data-out (libiscsi's
    // test_compareandwrite_invalid_dataout_size): not a no-op.
    expect_length_mismatch(&run(&mut d, &caw(0, 0), &vec![0; 256 << 10]));
    // COMPARE AND WRITE of one block with 2,048 bytes: ILLEGAL REQUEST, not MISCOMPARE.
    expect_length_mismatch(&run(&mut d, &caw(0, 1), &pattern(2048, 4)));
    // WRITE SAME(10) of one 512-byte block with 1,024 bytes of data-out.
    expect_length_mismatch(&run(&mut d, &cdb10(0x41, 0, 0, 1), &pattern(1024, 5)));
    assert!(read(&mut d, 0, 2).iter().all(|&b| b == 0), "nothing was written");
    // A parameter list may come with more than its length field says.
    expect_good(&run(&mut d, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[0; 64]));
}

#[test]
fn writes_to_read_only_lun_are_write_protected() {
    let mut cfg = config(512, 1 << 20);
    cfg.read_only = true;
    let mut d = driver(cfg, Box::new(RamEngine::new(1 << 20)));
    let data = [0u8; 512];
    for (cdb, out) in [
        (cdb10(0x2A, 0, 0, 1).to_vec(), &data[..]),
        (cdb10(0x41, 0, 0, 1).to_vec(), &data[..]),
        (cdb10(0x2E, 0, 0, 1).to_vec(), &data[..]),
        (vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[][..]),
    ] {
        expect_sense(&run(&mut d, &cdb, out), 0x7, Asc::WRITE_PROTECTED);
    }
    expect_good(&run(&mut d, &cdb10(0x28, 0, 0, 1), &[]));
    // MODE SENSE shows WP.
    assert_eq!(run(&mut d, &[0x1A, 0x08, 0x3F, 0, 255, 0], &[]).data()[2] & 0x80, 0x80);
}

/// Runs a command as initiator [`I`] whose map gives it LUN 0 read-only.
fn run_read_only(d: &mut LunDriver, cdb: &[u8], out: &[u8]) -> Finished {
    const TAG: u64 = 77;
    d.submit(TAG, &nexus(true), cdb, out);
    let mut done = Vec::new();
    while done.is_empty() {
        d.poll(&mut done, true).unwrap();
    }
    done.pop().unwrap()
}

#[test]
fn a_read_only_map_reports_wp_and_refuses_writes_for_that_initiator_only() {
    let mut d = ram_lun();
    // MODE SENSE(6) and (10), as Linux's sd sends them: WP in the device-specific parameter.
    assert_eq!(run_read_only(&mut d, &[0x1A, 0x00, 0x3F, 0, 192, 0], &[]).data()[2] & 0x80, 0x80);
    let ten = run_read_only(&mut d, &[0x5A, 0x00, 0x3F, 0, 0, 0, 0, 0x02, 0, 0], &[]);
    assert_eq!(ten.data()[3] & 0x80, 0x80);
    expect_sense(&run_read_only(&mut d, &cdb10(0x2A, 0, 0, 1), &[0; 512]), 0x7, Asc::WRITE_PROTECTED);
    // A read-write initiator of the same LUN still sees WP=0 and may write.
    assert_eq!(run(&mut d, &[0x1A, 0x00, 0x3F, 0, 192, 0], &[]).data()[2] & 0x80, 0);
    expect_good(&run(&mut d, &cdb10(0x2A, 0, 0, 1), &[0; 512]));
}

// ---- WRITE AND VERIFY, VERIFY ------------------------------------------------------------

#[test]
fn write_and_verify_10_and_16() {
    let mut d = ram_lun();
    let data = pattern(1024, 9);
    expect_good(&run(&mut d, &cdb10(0x2E, 0x02, 4, 2), &data));
    assert_eq!(read(&mut d, 4, 2), data);
    let mut c = rw16(0x8E, 100, 2, false);
    expect_good(&run(&mut d, &c, &data));
    assert_eq!(read(&mut d, 100, 2), data);
    c[1] = 0x04; // BYTCHK=10b is reserved
    expect_invalid_field(&run(&mut d, &c, &data), 1);
}

#[test]
fn verify_medium_and_byte_compare() {
    let mut d = ram_lun();
    let data = pattern(2048, 3);
    expect_good(&run(&mut d, &rw16(0x8A, 8, 4, false), &data));
    expect_good(&run(&mut d, &cdb10(0x2F, 0, 8, 4), &[]));
    expect_good(&run(&mut d, &cdb10(0x2F, 0x02, 8, 4), &data));
    let mut wrong = data.clone();
    wrong[1300] ^= 0xFF;
    let mut c = rw16(0x8F, 8, 4, false);
    c[1] = 0x02;
    let info = expect_sense(&run(&mut d, &c, &wrong), 0xE, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(info, Some(1300));
    expect_sense(&run(&mut d, &cdb10(0x2F, 0, 2047, 2), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
}

// ---- SYNCHRONIZE CACHE -------------------------------------------------------------------

#[test]
fn synchronize_cache_10_and_16() {
    let mut d = ram_lun();
    expect_good(&run(&mut d, &cdb10(0x35, 0, 0, 0), &[]));
    expect_good(&run(&mut d, &cdb10(0x35, 0x02, 100, 10), &[]));
    let mut c = rw16(0x91, 0, 0, false);
    expect_good(&run(&mut d, &c, &[]));
    c[2..10].copy_from_slice(&4096u64.to_be_bytes());
    expect_sense(&run(&mut d, &c, &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
}

// ---- UNMAP and GET LBA STATUS ------------------------------------------------------------

fn unmap_cdb(len: usize) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

fn lba_status(d: &mut gateway::lun::LunDriver, lba: u64) -> Vec<(u64, u32, u8)> {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let f = run(d, &c, &[]);
    expect_good(&f);
    let b = f.data();
    let n = (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize - 4) / 16;
    (0..n)
        .map(|i| {
            let e = &b[8 + 16 * i..24 + 16 * i];
            (u64::from_be_bytes(e[0..8].try_into().unwrap()), u32::from_be_bytes(e[8..12].try_into().unwrap()), e[12])
        })
        .collect()
}

#[test]
fn unmap_deallocates_several_ranges_and_reads_zero() {
    let mut d = ram_lun();
    let data = pattern(1 << 20, 5);
    expect_good(&run(&mut d, &rw16(0x8A, 0, 2048, false), &data));
    assert_eq!(lba_status(&mut d, 0), vec![(0, 2048, 0)]);
    let list = unmap_list(&[(128, 128), (1024, 256), (0, 0)]);
    expect_good(&run(&mut d, &unmap_cdb(list.len()), &list));
    assert!(read(&mut d, 128, 128).iter().all(|&b| b == 0));
    assert!(read(&mut d, 1024, 256).iter().all(|&b| b == 0));
    assert_eq!(read(&mut d, 0, 128), data[..65536]);
    assert_eq!(lba_status(&mut d, 0), vec![(0, 128, 0), (128, 128, 1), (256, 768, 0), (1024, 256, 1), (1280, 768, 0)]);
}

#[test]
fn unmap_parameter_errors() {
    let mut d = ram_lun();
    expect_good(&run(&mut d, &unmap_cdb(0), &[]));
    expect_sense(&run(&mut d, &unmap_cdb(4), &[0; 4]), 0x5, Asc::PARAMETER_LIST_LENGTH_ERROR);
    let list = unmap_list(&[(2040, 16)]);
    expect_sense(&run(&mut d, &unmap_cdb(list.len()), &list), 0x5, Asc::LBA_OUT_OF_RANGE);
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let list = unmap_list(&many);
    expect_sense(&run(&mut d, &unmap_cdb(list.len()), &list), 0x5, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
    let mut anchor = unmap_cdb(0);
    anchor[1] = 1;
    expect_invalid_field(&run(&mut d, &anchor, &[]), 1);
}

#[test]
fn unmap_of_zero_blocks_at_the_capacity_is_good() {
    // SBC-4 5.31.2 refuses a descriptor whose LBA plus NUMBER OF LOGICAL BLOCKS exceeds the
    // capacity; LBA 2048 plus 0 on a 2048-block LUN does not (libiscsi's test_unmap_0blocks).
    let mut d = ram_lun();
    let list = unmap_list(&[(2048, 0)]);
    expect_good(&run(&mut d, &unmap_cdb(list.len()), &list));
    let list = unmap_list(&[(2049, 0)]);
    expect_sense(&run(&mut d, &unmap_cdb(list.len()), &list), 0x5, Asc::LBA_OUT_OF_RANGE);
    let list = unmap_list(&[(2048, 1)]);
    expect_sense(&run(&mut d, &unmap_cdb(list.len()), &list), 0x5, Asc::LBA_OUT_OF_RANGE);
}

/// A 4 GiB LUN on the null engine, large enough that the Block Limits maximums, not the
/// capacity, are what a command runs into.
fn big_null_lun() -> gateway::lun::LunDriver {
    driver(config(512, 4 << 30), Box::new(gateway::engine::NullEngine::new(4 << 30)))
}

/// A field of the Block Limits VPD page, as a big-endian number.
fn block_limit(d: &mut LunDriver, at: usize, len: usize) -> u64 {
    let f = run(d, &[0x12, 1, 0xB0, 0, 64, 0], &[]);
    f.data()[at..at + len].iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

#[test]
fn block_limits_are_enforced_as_advertised() {
    let mut d = big_null_lun();
    let max_lbas = block_limit(&mut d, 20, 4);
    let max_descriptors = block_limit(&mut d, 24, 4);
    let max_write_same = block_limit(&mut d, 36, 8);
    // libiscsi's test_inquiry_block_limits takes more than 1 Mi blocks as a bogus page.
    assert!(max_lbas > 0 && max_lbas <= 1 << 20, "{max_lbas}");

    // One descriptor past MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: the BLOCK DESCRIPTOR DATA
    // LENGTH field (parameter byte 2) is pointed at.
    let many: Vec<(u64, u32)> = (0..=max_descriptors).map(|i| (i * 8, 1)).collect();
    let list = unmap_list(&many);
    let f = run(&mut d, &unmap_cdb(list.len()), &list);
    expect_sense(&f, 0x5, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
    assert_eq!((f.completion.sense[15] & 0xC0, &f.completion.sense[16..18]), (0x80, &[0u8, 2][..]));
    let list = unmap_list(&many[..max_descriptors as usize]);
    expect_good(&run(&mut d, &unmap_cdb(list.len()), &list));

    // One block past MAXIMUM UNMAP LBA COUNT, in one descriptor and split over two: the
    // NUMBER OF LOGICAL BLOCKS of the descriptor that crosses it is pointed at.
    let list = unmap_list(&[(0, max_lbas as u32 + 1)]);
    let f = run(&mut d, &unmap_cdb(list.len()), &list);
    expect_sense(&f, 0x5, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
    assert_eq!(&f.completion.sense[16..18], &[0, 16]);
    let list = unmap_list(&[(0, max_lbas as u32), (max_lbas + 8, 1)]);
    let f = run(&mut d, &unmap_cdb(list.len()), &list);
    assert_eq!(&f.completion.sense[16..18], &[0, 32]);
    let list = unmap_list(&[(0, max_lbas as u32)]);
    expect_good(&run(&mut d, &unmap_cdb(list.len()), &list));

    // WRITE SAME(16) one block past MAXIMUM WRITE SAME LENGTH: the NUMBER OF LOGICAL BLOCKS
    // field (CDB byte 10) is pointed at.
    let over = u32::try_from(max_write_same + 1).unwrap();
    expect_invalid_field(&run(&mut d, &rw16(0x93, 0, over, false), &[0; 512]), 10);
    expect_good(&run(&mut d, &rw16(0x93, 0, over - 1, false), &[0; 512]));
}

#[test]
fn get_lba_status_starts_at_the_requested_lba() {
    // libiscsi's test_get_lba_status_unmap_single: map 264 blocks, unmap LBAs 0-7, then ask
    // at LBA 9 with an allocation length of 24 (one descriptor).
    let mut d = ram_lun();
    expect_good(&run(&mut d, &cdb10(0x2A, 0, 0, 264), &pattern(264 * 512, 6)));
    let list = unmap_list(&[(0, 8)]);
    expect_good(&run(&mut d, &unmap_cdb(list.len()), &list));
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&9u64.to_be_bytes());
    c[13] = 24;
    let f = run(&mut d, &c, &[]);
    expect_good(&f);
    assert_eq!(f.data().len(), 24);
    assert_eq!(&f.data()[8..16], &9u64.to_be_bytes(), "the first descriptor starts at LBA 9");
    assert_eq!(f.data()[20] & 0x0F, 0, "mapped");
    // Inside the unmapped range too (whether the RAM image deallocates 4 KiB is its business).
    assert_eq!(lba_status(&mut d, 3)[0].0, 3);
}

#[test]
fn unmap_needs_thin_provisioning() {
    let mut cfg = config(512, 1 << 20);
    cfg.thin_provisioning = false;
    let mut d = driver(cfg, Box::new(RamEngine::new(1 << 20)));
    expect_sense(&run(&mut d, &unmap_cdb(0), &[]), 0x5, Asc::INVALID_OPCODE);
    let vpd = run(&mut d, &[0x12, 1, 0xB2, 0, 64, 0], &[]);
    assert_eq!(vpd.data()[5], 0, "LBPU clear");
}

#[test]
fn get_lba_status_errors() {
    let mut d = ram_lun();
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&2048u64.to_be_bytes());
    c[13] = 24;
    expect_sense(&run(&mut d, &c, &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    assert_eq!(lba_status(&mut d, 2000), vec![(2000, 48, 1)]);
}

// ---- WRITE SAME --------------------------------------------------------------------------

#[test]
fn write_same_pattern_zero_unmap_and_ndob() {
    let mut d = ram_lun();
    let block = pattern(512, 77);
    expect_good(&run(&mut d, &cdb10(0x41, 0, 10, 300), &block));
    let back = read(&mut d, 10, 300);
    assert!(back.chunks(512).all(|c| c == &block[..]));
    // UNMAP bit with a zero block deallocates.
    expect_good(&run(&mut d, &cdb10(0x41, 0x08, 0, 2048), &[0u8; 512]));
    assert!(read(&mut d, 10, 300).iter().all(|&b| b == 0));
    assert_eq!(lba_status(&mut d, 0), vec![(0, 2048, 1)]);
    // NDOB: no data-out, zeros.
    expect_good(&run(&mut d, &rw16(0x8A, 0, 1, false), &block));
    let mut c = rw16(0x93, 0, 1, false);
    c[1] = 0x01;
    expect_good(&run(&mut d, &c, &[]));
    assert!(read(&mut d, 0, 1).iter().all(|&b| b == 0));
    // Without UNMAP, zeros stay allocated.
    expect_good(&run(&mut d, &cdb10(0x41, 0, 0, 128), &[0u8; 512]));
    assert_eq!(lba_status(&mut d, 0)[0], (0, 128, 0));
}

#[test]
fn write_same_errors() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &cdb10(0x41, 0, 0, 0), &[0u8; 512]), 7);
    expect_sense(&run(&mut d, &cdb10(0x41, 0, 2047, 2), &[0u8; 512]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_invalid_field(&run(&mut d, &cdb10(0x41, 0x10, 0, 1), &[0u8; 512]), 1);
}

// ---- COMPARE AND WRITE -------------------------------------------------------------------

fn caw(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

#[test]
fn compare_and_write_success_and_miscompare() {
    let mut d = ram_lun();
    let old = pattern(1024, 1);
    let new = pattern(1024, 2);
    expect_good(&run(&mut d, &rw16(0x8A, 50, 2, false), &old));
    let mut out = old.clone();
    out.extend(&new);
    expect_good(&run(&mut d, &caw(50, 2), &out));
    assert_eq!(read(&mut d, 50, 2), new);
    // Now the medium holds `new`: comparing against `old` fails at byte 0 and writes nothing.
    let mut stale = old.clone();
    stale[..700].copy_from_slice(&new[..700]);
    stale.extend(&pattern(1024, 3));
    let info = expect_sense(&run(&mut d, &caw(50, 2), &stale), 0xE, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(info, Some(new.iter().zip(&old).skip(700).position(|(a, b)| a != b).unwrap() as u64 + 700));
    assert_eq!(read(&mut d, 50, 2), new);
}

// ---- ORWRITE, PRE-FETCH, VERIFY(12), WRITE AND VERIFY(12) --------------------------------

#[test]
fn orwrite_16_ors_the_data_into_the_blocks() {
    let mut d = ram_lun();
    let old = pattern(1024, 7);
    let mask = pattern(1024, 0x5A);
    expect_good(&run(&mut d, &rw16(0x8A, 40, 2, false), &old));
    expect_good(&run(&mut d, &rw16(0x8B, 40, 2, false), &mask));
    let want: Vec<u8> = old.iter().zip(&mask).map(|(a, b)| a | b).collect();
    assert_eq!(read(&mut d, 40, 2), want);
    assert_eq!(read(&mut d, 42, 1), vec![0; 512], "the block after is untouched");
    // Errors: past the end, ORPROTECT set, short data, and no blocks is a no-op.
    expect_sense(&run(&mut d, &rw16(0x8B, 2047, 2, false), &[0; 1024]), 0x5, Asc::LBA_OUT_OF_RANGE);
    let mut protect = rw16(0x8B, 0, 1, false);
    protect[1] = 0x20;
    expect_invalid_field(&run(&mut d, &protect, &[0; 512]), 1);
    expect_length_mismatch(&run(&mut d, &rw16(0x8B, 0, 2, false), &[0xFF; 512]));
    expect_good(&run(&mut d, &rw16(0x8B, 0, 0, false), &[]));
    assert_eq!(read(&mut d, 0, 2), vec![0; 1024]);
}

#[test]
fn orwrite_is_refused_on_a_read_only_map() {
    let mut d = ram_lun();
    expect_sense(&run_read_only(&mut d, &rw16(0x8B, 0, 1, false), &[1; 512]), 0x7, Asc::WRITE_PROTECTED);
}

#[test]
fn pre_fetch_10_and_16() {
    let mut d = ram_lun();
    expect_good(&run(&mut d, &cdb10(0x34, 0, 0, 16), &[]));
    expect_good(&run(&mut d, &cdb10(0x34, 0x02, 2040, 8), &[]));
    expect_good(&run(&mut d, &cdb10(0x34, 0, 100, 0), &[]));
    let mut c = rw16(0x90, 0, 2048, false);
    c[1] = 0x02; // IMMED
    expect_good(&run(&mut d, &c, &[]));
    expect_sense(&run(&mut d, &cdb10(0x34, 0, 2047, 2), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_sense(&run(&mut d, &rw16(0x90, 2048, 1, false), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_invalid_field(&run(&mut d, &cdb10(0x34, 0x04, 0, 1), &[]), 1);
}

/// A 12-byte block command CDB (READ/WRITE/VERIFY/WRITE AND VERIFY (12)).
fn cdb12(op: u8, byte1: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = op;
    c[1] = byte1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn verify_12_and_write_and_verify_12() {
    let mut d = ram_lun();
    let data = pattern(2048, 8);
    expect_good(&run(&mut d, &cdb12(0xAE, 0x02, 16, 4), &data));
    assert_eq!(read(&mut d, 16, 4), data);
    expect_good(&run(&mut d, &cdb12(0xAF, 0, 16, 4), &[]));
    expect_good(&run(&mut d, &cdb12(0xAF, 0x02, 16, 4), &data));
    let mut wrong = data.clone();
    wrong[600] ^= 1;
    let info = expect_sense(&run(&mut d, &cdb12(0xAF, 0x02, 16, 4), &wrong), 0xE, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(info, Some(600));
    expect_sense(&run(&mut d, &cdb12(0xAF, 0, 2047, 2), &[]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_invalid_field(&run(&mut d, &cdb12(0xAF, 0x06, 0, 1), &[0; 512]), 1);
}

#[test]
fn commands_pangate_does_not_implement_are_invalid_opcodes() {
    let mut d = ram_lun();
    // EXTENDED COPY, RECEIVE COPY RESULTS, SANITIZE, WRITE ATOMIC(16).
    for cdb in [
        vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x48, 0x01, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x9C, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ] {
        expect_sense(&run(&mut d, &cdb, &[]), 0x5, Asc::INVALID_OPCODE);
    }
}

#[test]
fn compare_and_write_errors() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &caw(0, 17), &vec![0; 17 * 1024]), 13);
    expect_sense(&run(&mut d, &caw(2047, 2), &[0; 2048]), 0x5, Asc::LBA_OUT_OF_RANGE);
    expect_good(&run(&mut d, &caw(0, 0), &[]));
}
