//! Byte-fixture tests of the device-level commands (mode pages, REPORT LUNS and supported
//! operation codes, START STOP UNIT and medium removal, absent LUNs) and of backend failures
//! as sense, through the LUN driver on the RAM engine. `commands.rs` has the rest.

mod support;

use gateway::engine::{AlignedBuf, Backend, EngineError, IoCompletion, IoOp, IoRequest, RamEngine};
use scsi::{absent_lun, Asc, Status};
use support::*;

// ---- MODE SENSE / MODE SELECT ------------------------------------------------------------

#[test]
fn mode_sense_6_and_10_every_page_and_control() {
    let mut d = ram_lun();
    for (page, len) in [(0x01u8, 12usize), (0x08, 20), (0x0A, 12)] {
        for pc in 0..4u8 {
            let f = run(&mut d, &[0x1A, 0x08, (pc << 6) | page, 0, 255, 0], &[]);
            expect_good(&f);
            assert_eq!(f.data().len(), 4 + len, "page {page:#x} pc {pc}");
            assert_eq!(f.data()[4] & 0x3F, page);
        }
    }
    let f = run(&mut d, &[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    expect_good(&f);
    let b = f.data();
    assert_eq!(u16::from_be_bytes([b[0], b[1]]) as usize, b.len() - 2);
    assert_eq!((b[4], u16::from_be_bytes([b[6], b[7]])), (1, 16), "long LBA descriptor");
    assert_eq!(&b[8..16], &2048u64.to_be_bytes());
    let f = run(&mut d, &[0x1A, 0, 0x3F, 0, 10, 0], &[]);
    assert_eq!(f.data().len(), 10, "truncated to allocation length");
}

#[test]
fn mode_sense_errors() {
    let mut d = ram_lun();
    expect_invalid_field(&run(&mut d, &[0x1A, 0, 0x1C, 0, 255, 0], &[]), 2);
    expect_invalid_field(&run(&mut d, &[0x1A, 0, 0x08, 0x01, 255, 0], &[]), 3);
}

#[test]
fn mode_select_changes_wce_saves_and_notifies_others() {
    let mut d = ram_lun();
    d.run(2, &[0], &[0; 6], &[]).unwrap(); // initiator 2 consumes its power-on attention
    let mut caching = run(&mut d, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]).data().to_vec();
    caching[0] = 0;
    caching[2] = 0;
    caching[6] &= !0x04; // clear WCE
    expect_good(&run(&mut d, &[0x15, 0x11, 0, 0, caching.len() as u8, 0], &caching));
    assert_eq!(run(&mut d, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]).data()[6] & 0x04, 0);
    assert_eq!(run(&mut d, &[0x1A, 0x08, 0xC8, 0, 255, 0], &[]).data()[6] & 0x04, 0, "saved");
    assert_eq!(run(&mut d, &[0x1A, 0x08, 0x88, 0, 255, 0], &[]).data()[6] & 0x04, 0x04, "default");
    expect_sense(&d.run(2, &[0], &[0; 6], &[]).unwrap(), 0x6, Asc::MODE_PARAMETERS_CHANGED);
    // With WCE off, writes are forced to media and still work.
    expect_good(&run(&mut d, &cdb10(0x2A, 0, 0, 1), &[1; 512]));
}

#[test]
fn mode_select_10_enables_descriptor_sense() {
    let mut d = ram_lun();
    let mut control = run(&mut d, &[0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0, 255, 0], &[]).data().to_vec();
    control[0] = 0;
    control[1] = 0;
    control[10] |= 0x04; // D_SENSE
    let mut c = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    c[8] = control.len() as u8;
    expect_good(&run(&mut d, &c, &control));
    let f = run(&mut d, &rw16(0x88, 5000, 1, false), &[]);
    assert_eq!(f.completion.sense[0], 0x72);
    expect_sense(&f, 0x5, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn software_write_protect_refuses_writes_for_every_initiator_until_cleared() {
    let mut d = ram_lun();
    d.run(2, &[0], &[0; 6], &[]).unwrap(); // initiator 2 consumes its power-on attention
    let mut control = run(&mut d, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).data().to_vec();
    assert_eq!(control[2] & 0x80, 0, "not write protected yet");
    control[0] = 0;
    control[2] = 0;
    control[8] |= 0x08; // SWP
    expect_good(&run(&mut d, &[0x15, 0x10, 0, 0, control.len() as u8, 0], &control));
    assert_eq!(run(&mut d, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).data()[2] & 0x80, 0x80, "WP");
    expect_sense(&run(&mut d, &cdb10(0x2A, 0, 0, 1), &[1; 512]), 0x7, Asc::SOFTWARE_WRITE_PROTECTED);
    expect_sense(&d.run(2, &[0], &[0; 6], &[]).unwrap(), 0x6, Asc::MODE_PARAMETERS_CHANGED);
    let other = d.run(2, &[0], &cdb10(0x2A, 0, 0, 1), &[1; 512]).unwrap();
    expect_sense(&other, 0x7, Asc::SOFTWARE_WRITE_PROTECTED);
    expect_good(&run(&mut d, &cdb10(0x28, 0, 0, 1), &[]));
    control[8] &= !0x08;
    expect_good(&run(&mut d, &[0x15, 0x10, 0, 0, control.len() as u8, 0], &control));
    expect_good(&run(&mut d, &cdb10(0x2A, 0, 0, 1), &[1; 512]));
}

#[test]
fn reserve_holds_the_unit_for_one_initiator_until_release_reset_or_nexus_loss() {
    let mut d = ram_lun();
    let tur = [0u8; 6];
    d.run(2, &[0], &tur, &[]).unwrap(); // initiator 2 consumes its power-on attention
    run(&mut d, &tur, &[]);
    expect_good(&run(&mut d, &[0x16, 0, 0, 0, 0, 0], &[]));
    expect_good(&run(&mut d, &[0x16, 0, 0, 0, 0, 0], &[]));
    let conflict = |d: &mut gateway::lun::LunDriver, cdb: &[u8]| d.run(2, &[0], cdb, &[]).unwrap().completion.status;
    assert_eq!(conflict(&mut d, &[0x16, 0, 0, 0, 0, 0]), Status::ReservationConflict);
    assert_eq!(conflict(&mut d, &[0x1A, 0, 0x3F, 0, 255, 0]), Status::ReservationConflict);
    assert_eq!(conflict(&mut d, &cdb10(0x28, 0, 0, 1)), Status::ReservationConflict);
    assert_eq!(conflict(&mut d, &[0x12, 0, 0, 0, 36, 0]), Status::Good, "INQUIRY is allowed");
    assert_eq!(conflict(&mut d, &[0x17, 0, 0, 0, 0, 0]), Status::Good, "a release by another is a no-op");
    expect_good(&run(&mut d, &cdb10(0x28, 0, 0, 1), &[]));
    expect_good(&run(&mut d, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(conflict(&mut d, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Status::Good, "released: 2 reserves");
    // Nexus loss releases it.
    d.unit_mut().forget(2);
    expect_good(&run(&mut d, &[0x16, 0, 0, 0, 0, 0], &[]));
    // So does a LUN reset.
    d.unit_mut().reset();
    d.run(2, &[0], &tur, &[]).unwrap(); // the reset's attention
    run(&mut d, &tur, &[]);
    assert_eq!(conflict(&mut d, &tur), Status::Good);
    // Third-party reservations are not supported.
    expect_invalid_field(&run(&mut d, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[]), 1);
}

#[test]
fn read_defect_data_reports_empty_lists() {
    let mut d = ram_lun();
    let f = run(&mut d, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 255, 0], &[]);
    assert_eq!(f.data(), &[0, 0x1D, 0, 0]);
    let f = run(&mut d, &[0xB7, 0x0D, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(f.data(), &[0, 0x0D, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn mode_select_errors() {
    let mut d = ram_lun();
    let mut caching = run(&mut d, &[0x1A, 0x08, 0x08, 0, 255, 0], &[]).data().to_vec();
    caching[0] = 0;
    caching[2] = 0;
    caching[7] = 0x01; // a field that is not changeable
    expect_sense(
        &run(&mut d, &[0x15, 0x11, 0, 0, caching.len() as u8, 0], &caching),
        0x5,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    expect_sense(&run(&mut d, &[0x15, 0x10, 0, 0, 2, 0], &[0, 0]), 0x5, Asc::PARAMETER_LIST_LENGTH_ERROR);
    expect_invalid_field(&run(&mut d, &[0x15, 0x00, 0, 0, 4, 0], &[0; 4]), 1);
    // A block descriptor that changes the block length.
    let p = [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    expect_sense(&run(&mut d, &[0x15, 0x10, 0, 0, 12, 0], &p), 0x5, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

// ---- REPORT LUNS, REPORT SUPPORTED OPERATION CODES ---------------------------------------

#[test]
fn report_luns_lists_the_initiators_map() {
    let mut d = ram_lun();
    let f = d.run(I, &[0, 3, 300], &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).unwrap();
    expect_good(&f);
    assert_eq!(&f.data()[0..4], &24u32.to_be_bytes());
    assert_eq!(&f.data()[24..26], &[0x41, 0x2C]);
    let f = d.run(I, &[0, 3], &[0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).unwrap();
    assert_eq!(f.data(), &[0; 8]);
    expect_invalid_field(&run(&mut d, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[]), 6);
    expect_invalid_field(&run(&mut d, &[0xA0, 0, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]), 2);
}

#[test]
fn report_supported_operation_codes() {
    let mut d = ram_lun();
    let all = run(&mut d, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]);
    expect_good(&all);
    let n = u32::from_be_bytes(all.data()[0..4].try_into().unwrap()) as usize;
    assert_eq!(n, 8 * scsi::opcodes::COMMANDS.len());
    let timed = run(&mut d, &[0xA3, 0x0C, 0x80, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]);
    assert_eq!(u32::from_be_bytes(timed.data()[0..4].try_into().unwrap()) as usize, 20 * scsi::opcodes::COMMANDS.len());
    let one = run(&mut d, &[0xA3, 0x0C, 0x01, 0x2A, 0, 0, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(&one.data()[..6], &[0, 0x03, 0, 10, 0x2A, 0x18]);
    let sa = run(&mut d, &[0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(&sa.data()[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    let none = run(&mut d, &[0xA3, 0x0C, 0x01, 0xC5, 0, 0, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(none.data()[1], 0x01, "not supported");
    expect_invalid_field(&run(&mut d, &[0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 0, 64, 0, 0], &[]), 2);
    expect_invalid_field(&run(&mut d, &[0xA3, 0x0C, 0x05, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[]), 2);
    expect_invalid_field(&run(&mut d, &[0xA3, 0x05, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[]), 1);
}

#[test]
fn every_reported_usage_mask_is_what_decoding_accepts() {
    // For each command, a CDB with every "used" bit set must not fail on a reserved bit.
    let mut d = ram_lun();
    for c in scsi::opcodes::COMMANDS {
        let f = run(&mut d, c.usage, &vec![0; 1 << 16]);
        if f.completion.status == Status::CheckCondition {
            let s = &f.completion.sense;
            let pointer_to_reserved = s[12] == 0x24 && s[15] & 0x08 != 0 && {
                let byte = usize::from(u16::from_be_bytes([s[16], s[17]]));
                let bit = s[15] & 7;
                c.usage[byte] & (1 << bit) == 0
            };
            assert!(!pointer_to_reserved, "{:#04x}: a used bit was reported reserved: {s:02x?}", c.opcode);
        }
    }
}

// ---- START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, unknown opcodes ----------------------

#[test]
fn start_stop_and_prevent_allow() {
    let mut d = ram_lun();
    expect_good(&run(&mut d, &[0x1B, 0, 0, 0, 0x01, 0], &[]));
    expect_good(&run(&mut d, &[0x1B, 1, 0, 0, 0x00, 0], &[]));
    expect_good(&run(&mut d, &[0x1B, 0, 0, 0, 0x04, 0], &[]));
    expect_invalid_field(&run(&mut d, &[0x1B, 0, 0, 0, 0x30, 0], &[]), 4);
    expect_good(&run(&mut d, &[0x1E, 0, 0, 0, 1, 0], &[]));
    expect_invalid_field(&run(&mut d, &[0x1E, 0, 0, 0, 4, 0], &[]), 4);
}

#[test]
fn unknown_opcode_and_short_cdb() {
    let mut d = ram_lun();
    expect_sense(&run(&mut d, &[0xC1, 0, 0, 0, 0, 0], &[]), 0x5, Asc::INVALID_OPCODE);
    expect_sense(&run(&mut d, &[0x28, 0, 0], &[]), 0x5, Asc::INVALID_OPCODE);
    expect_sense(&run(&mut d, &[], &[]), 0x5, Asc::INVALID_OPCODE);
}

// ---- Absent LUNs -------------------------------------------------------------------------

#[test]
fn absent_lun_answers() {
    let inq = absent_lun(&[0x12, 0, 0, 0, 36, 0], &[0]);
    assert_eq!(inq.status, Status::Good);
    assert!(matches!(&inq.data_in, scsi::DataIn::Bytes(b) if b[0] == 0x7F));
    let luns = absent_lun(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[0, 1]);
    assert!(matches!(&luns.data_in, scsi::DataIn::Bytes(b) if b[3] == 16));
    let tur = absent_lun(&[0, 0, 0, 0, 0, 0], &[0]);
    assert_eq!(scsi::sense::parse_sense(&tur.sense).unwrap().1, Asc::LUN_NOT_SUPPORTED);
    let rs = absent_lun(&[0x03, 0, 0, 0, 18, 0], &[0]);
    assert!(matches!(&rs.data_in, scsi::DataIn::Bytes(b) if b[12] == 0x25));
}

// ---- Backend failures map to sense -------------------------------------------------------

/// An engine whose every data operation fails with a chosen error.
#[derive(Debug)]
struct Failing {
    inner: RamEngine,
    error: EngineError,
}

impl Backend for Failing {
    fn submit(&mut self, req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        match req.op {
            IoOp::Read { .. } | IoOp::Write { .. } | IoOp::Flush => Err((req, self.error.clone())),
            _ => self.inner.submit(req),
        }
    }
    fn reap(&mut self, out: &mut Vec<IoCompletion>, min: usize) -> std::io::Result<()> {
        self.inner.reap(out, min)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn buffer(&mut self, len: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len)
    }
    fn name(&self) -> &'static str {
        "failing"
    }
}

#[test]
fn backend_errors_become_the_right_sense() {
    let cases = [
        (EngineError::Os(libc::EIO), false, 0x3, Asc::UNRECOVERED_READ_ERROR),
        (EngineError::Short { done: 1, wanted: 2 }, false, 0x3, Asc::UNRECOVERED_READ_ERROR),
        (EngineError::Os(libc::EIO), true, 0x3, Asc::WRITE_ERROR),
        (EngineError::Os(libc::ENOSPC), true, 0x7, Asc::SPACE_ALLOCATION_FAILED),
        (EngineError::Os(libc::EROFS), true, 0x7, Asc::WRITE_PROTECTED),
    ];
    for (error, write, key, asc) in cases {
        let backend = Failing { inner: RamEngine::new(1 << 20), error };
        let mut d = driver(config(512, 1 << 20), Box::new(backend));
        let f =
            if write { run(&mut d, &cdb10(0x2A, 0, 0, 1), &[0; 512]) } else { run(&mut d, &cdb10(0x28, 0, 0, 1), &[]) };
        expect_sense(&f, key, asc);
    }
}
