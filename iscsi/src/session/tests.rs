use super::*;
use crate::bhs::field;
use crate::pdu::{NopOut, TaskMgmt};
use crate::text;
use crate::{Opcode, RawPdu};

const LUN0: u64 = 0;

fn session(params: impl FnOnce(&mut Params)) -> Session {
    let mut p = Params {
        initiator_max_recv_data: 1024,
        max_burst: 4096,
        first_burst: 2048,
        immediate_data: true,
        initial_r2t: false,
        ..Params::default()
    };
    params(&mut p);
    Session::new(SessionConfig {
        params: p,
        max_recv_data: 8192,
        depth: 4,
        max_task_bytes: 1 << 20,
        luns: vec![(0, 512)],
        stat_sn: 100,
        exp_cmd_sn: 1,
        targets: vec![("iqn.t:demo.t0".into(), vec!["127.0.0.1:3260,1".into()])],
    })
}

/// Everything the session sent so far, as PDUs.
fn sent(s: &mut Session) -> Vec<RawPdu> {
    let f = Framer { digests: Digests::default(), max_data: 1 << 24 };
    let mut out = Vec::new();
    let bytes = std::mem::take(&mut s.out);
    let mut at = 0;
    while let Some((pdu, used)) = f.parse(&bytes[at..]).unwrap() {
        out.push(pdu);
        at += used;
    }
    assert_eq!(at, bytes.len(), "a partial PDU was left");
    out
}

fn work(s: &mut Session) -> Vec<Work> {
    std::mem::take(&mut s.work)
}

fn cmd(itt: u32, cmd_sn: u32, cdb: &[u8], read: bool, write: bool, edtl: u32, data: Vec<u8>) -> Pdu {
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read,
        write,
        attr: 1,
        lun: LUN0,
        itt,
        expected_len: edtl,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: cdb.to_vec(),
        bidi_read_len: None,
        data,
    })
}

fn read10(blocks: u16) -> [u8; 10] {
    let b = blocks.to_be_bytes();
    [0x28, 0, 0, 0, 0, 0, 0, b[0], b[1], 0]
}

fn write10(blocks: u16) -> [u8; 10] {
    let b = blocks.to_be_bytes();
    [0x2A, 0, 0, 0, 0, 0, 0, b[0], b[1], 0]
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, len: usize, final_bit: bool) -> Pdu {
    Pdu::DataOut(DataOut { final_bit, lun: LUN0, itt, ttt, exp_stat_sn: 0, data_sn, offset, data: vec![0xab; len] })
}

fn exec(w: &[Work]) -> &Exec {
    match w {
        [Work::Execute(e)] => e,
        other => panic!("expected one Execute, got {other:?}"),
    }
}

#[test]
fn a_read_is_split_to_the_initiators_segment_size_with_status_in_the_last() {
    let mut s = session(|_| {});
    s.receive(cmd(7, 1, &read10(6), true, false, 3072, vec![])).unwrap();
    let w = work(&mut s);
    assert_eq!(exec(&w).data_in, 3072);
    s.complete(7, 0, &[], &[5u8; 3072]);
    let pdus = sent(&mut s);
    assert_eq!(pdus.len(), 3);
    for (i, p) in pdus.iter().enumerate() {
        assert_eq!(p.bhs.opcode(), Some(Opcode::DataIn));
        assert_eq!(p.bhs.get32(field::DATA_SN), i as u32);
        assert_eq!(p.bhs.get32(field::BUFFER_OFFSET), 1024 * i as u32);
        assert_eq!(p.data.len(), 1024);
    }
    let last = &pdus[2].bhs;
    assert_eq!(last.flags() & 0x81, 0x81, "F and S on the last");
    assert_eq!(pdus[0].bhs.flags() & 0x01, 0, "no status before the last");
    assert_eq!(last.get32(field::STAT_SN), 100);
    assert_eq!(last.get32(field::MAX_CMD_SN), 5, "the window moved on when the read finished");
}

#[test]
fn data_in_sequences_end_at_max_burst_length() {
    let mut s = session(|p| {
        p.max_burst = 2048;
    });
    s.receive(cmd(1, 1, &read10(8), true, false, 4096, vec![])).unwrap();
    work(&mut s);
    s.complete(1, 0, &[], &[1u8; 4096]);
    let finals: Vec<bool> = sent(&mut s).iter().map(|p| p.bhs.final_bit()).collect();
    assert_eq!(finals, [false, true, false, true]);
}

#[test]
fn read_residuals_are_against_the_expected_length() {
    // EDTL 200 for one 512-byte block: 200 bytes move, 312 overflow.
    let mut s = session(|_| {});
    s.receive(cmd(1, 1, &read10(1), true, false, 200, vec![])).unwrap();
    assert_eq!(exec(&work(&mut s)).data_in, 512, "room for the whole block");
    s.complete(1, 0, &[], &[9u8; 512]);
    let p = sent(&mut s);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].data.len(), 200);
    assert_eq!(p[0].bhs.flags() & 0x06, 0x04, "overflow");
    assert_eq!(p[0].bhs.get32(field::RESIDUAL_COUNT), 312);

    // EDTL 10000 for one block: underflow 9488.
    s.receive(cmd(2, 2, &read10(1), true, false, 10000, vec![])).unwrap();
    assert_eq!(exec(&work(&mut s)).data_in, 10000);
    s.complete(2, 0, &[], &[9u8; 512]);
    let p = sent(&mut s);
    assert_eq!(p.last().unwrap().bhs.flags() & 0x06, 0x02, "underflow");
    assert_eq!(p.last().unwrap().bhs.get32(field::RESIDUAL_COUNT), 9488);

    // EDTL 0: a SCSI Response with overflow of the block.
    s.receive(cmd(3, 3, &read10(1), true, false, 0, vec![])).unwrap();
    work(&mut s);
    s.complete(3, 0, &[], &[9u8; 512]);
    let p = sent(&mut s);
    assert_eq!(p[0].bhs.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(p[0].bhs.get32(field::RESIDUAL_COUNT), 512);
}

#[test]
fn a_write_takes_immediate_unsolicited_then_solicited_data() {
    let mut s = session(|_| {});
    // 8 KiB: 1 KiB immediate, up to FirstBurstLength (2 KiB) unsolicited, then R2Ts of
    // at most MaxBurstLength (4 KiB).
    let mut c = cmd(9, 1, &write10(16), false, true, 8192, vec![1; 1024]);
    if let Pdu::ScsiCommand(c) = &mut c {
        c.final_bit = false;
    }
    s.receive(c).unwrap();
    assert!(sent(&mut s).is_empty(), "waits for the unsolicited data");
    s.receive(data_out(9, RESERVED_TAG, 0, 1024, 1024, true)).unwrap();
    let r2t = sent(&mut s);
    assert_eq!(r2t.len(), 1);
    assert_eq!(r2t[0].bhs.opcode(), Some(Opcode::R2t));
    assert_eq!(r2t[0].bhs.get32(field::BUFFER_OFFSET), 2048);
    assert_eq!(r2t[0].bhs.get32(field::DESIRED_DATA_TRANSFER_LENGTH), 4096);
    assert_eq!(r2t[0].bhs.get32(field::DATA_SN), 0, "R2TSN 0");
    let ttt = r2t[0].bhs.get32(field::TTT);
    for i in 0..4 {
        s.receive(data_out(9, ttt, i, 2048 + 1024 * i, 1024, i == 3)).unwrap();
    }
    let r2t = sent(&mut s);
    assert_eq!(r2t[0].bhs.get32(field::BUFFER_OFFSET), 6144);
    assert_eq!(r2t[0].bhs.get32(field::DESIRED_DATA_TRANSFER_LENGTH), 2048);
    assert_eq!(r2t[0].bhs.get32(field::DATA_SN), 1, "R2TSN 1");
    let ttt2 = r2t[0].bhs.get32(field::TTT);
    assert_ne!(ttt, ttt2);
    assert!(work(&mut s).is_empty());
    s.receive(data_out(9, ttt2, 0, 6144, 1024, false)).unwrap();
    s.receive(data_out(9, ttt2, 1, 7168, 1024, true)).unwrap();
    let w = work(&mut s);
    let e = exec(&w);
    assert_eq!(e.data_out.len(), 8192);
    assert_eq!(&e.data_out[..1024], &[1u8; 1024][..]);
    assert_eq!(e.data_out[1024], 0xab);
    s.complete(9, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r[0].bhs.flags() & 0x06, 0, "no residual");
}

#[test]
fn data_out_that_breaks_its_sequence_ends_the_connection() {
    let cases: [(&str, Pdu); 4] = [
        ("wrong offset", data_out(9, RESERVED_TAG, 0, 512, 512, false)),
        ("past the first burst", data_out(9, RESERVED_TAG, 0, 0, 4096, true)),
        ("unknown task", data_out(10, RESERVED_TAG, 0, 0, 512, false)),
        ("no such R2T", data_out(9, 77, 0, 0, 512, false)),
    ];
    for (what, bad) in cases {
        let mut s = session(|_| {});
        s.receive(unsolicited_write(9, 8)).unwrap();
        assert!(s.receive(bad).is_err(), "{what}");
    }
}

fn unsolicited_write(itt: u32, blocks: u16) -> Pdu {
    let mut c = cmd(itt, 1, &write10(blocks), false, true, u32::from(blocks) * 512, vec![]);
    if let Pdu::ScsiCommand(c) = &mut c {
        c.final_bit = false;
    }
    c
}

#[test]
fn a_data_sn_error_ends_the_task_with_check_condition_and_drops_the_rest_of_its_data() {
    let mut s = session(|_| {});
    s.receive(unsolicited_write(9, 2)).unwrap();
    s.receive(data_out(9, RESERVED_TAG, 1, 0, 512, false)).unwrap();
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r[0].bhs.get(field::STATUS), 2);
    let sense = &r[0].data[2..];
    assert_eq!((sense[2] & 0x0f, sense[12]), (0x0B, 0x4B), "ABORTED COMMAND / DATA PHASE ERROR");
    s.receive(data_out(9, RESERVED_TAG, 0, 512, 512, true)).unwrap();
    assert!(work(&mut s).is_empty() && sent(&mut s).is_empty(), "the rest is dropped quietly");
}

#[test]
fn a_write_whose_expected_length_disagrees_with_the_cdb_moves_what_both_allow() {
    let mut s = session(|_| {});
    // One block, EDTL 200: no whole block can be written; refused, with the residual.
    s.receive(cmd(1, 1, &write10(1), false, true, 200, vec![7; 200])).unwrap();
    assert!(work(&mut s).is_empty(), "never executed");
    let r = sent(&mut s);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.get(field::STATUS), 2);
    assert_eq!(r[0].bhs.flags() & 0x06, 0x04, "overflow");
    assert_eq!(r[0].bhs.get32(field::RESIDUAL_COUNT), 312);
    let sense = &r[0].data[2..];
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (5, 0x0E, 0x03));
    // Two blocks' worth for one: the CDB's one block is written; underflow.
    s.receive(cmd(2, 2, &write10(1), false, true, 1024, vec![7; 1024])).unwrap();
    let w = work(&mut s);
    assert_eq!((exec(&w).data_out.len(), exec(&w).cdb[8]), (512, 1));
    s.complete(2, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.get(field::STATUS), 0);
    assert_eq!(r[0].bhs.flags() & 0x06, 0x02);
    assert_eq!(r[0].bhs.get32(field::RESIDUAL_COUNT), 512);
    // Two blocks with one expected: the CDB is cut to the one block sent; overflow.
    s.receive(cmd(3, 3, &write10(2), false, true, 512, vec![7; 512])).unwrap();
    let w = work(&mut s);
    assert_eq!((exec(&w).data_out.len(), exec(&w).cdb[8]), (512, 1));
    s.complete(3, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.flags() & 0x06, 0x04);
    assert_eq!(r[0].bhs.get32(field::RESIDUAL_COUNT), 512);
}

#[test]
fn the_cmdsn_window_holds_gaps_drops_outsiders_and_moves_as_commands_finish() {
    let mut s = session(|_| {});
    let tur = [0u8; 6];
    // Window is [1, 4]. CmdSN 5 is outside: dropped without an answer.
    s.receive(cmd(50, 5, &tur, false, false, 0, vec![])).unwrap();
    assert!(work(&mut s).is_empty() && sent(&mut s).is_empty());
    // CmdSN 2 waits for 1.
    s.receive(cmd(2, 2, &tur, false, false, 0, vec![])).unwrap();
    assert!(work(&mut s).is_empty());
    s.receive(cmd(1, 1, &tur, false, false, 0, vec![])).unwrap();
    let w = work(&mut s);
    let itts: Vec<u32> = w.iter().map(|w| if let Work::Execute(e) = w { e.itt } else { 0 }).collect();
    assert_eq!(itts, [1, 2], "in CmdSN order");
    // A stale CmdSN is dropped too.
    s.receive(cmd(60, 1, &tur, false, false, 0, vec![])).unwrap();
    assert!(work(&mut s).is_empty());
    s.complete(1, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.get32(field::EXP_CMD_SN), 3);
    assert_eq!(r[0].bhs.get32(field::MAX_CMD_SN), 5, "one finished: one more slot");
    // Now 5 is in the window.
    s.receive(cmd(3, 3, &tur, false, false, 0, vec![])).unwrap();
    s.receive(cmd(4, 4, &tur, false, false, 0, vec![])).unwrap();
    s.receive(cmd(5, 5, &tur, false, false, 0, vec![])).unwrap();
    assert_eq!(work(&mut s).len(), 3);
    // Full: 2, 3, 4, 5 outstanding, MaxCmdSN 5. CmdSN 6 is dropped.
    s.receive(cmd(6, 6, &tur, false, false, 0, vec![])).unwrap();
    assert!(work(&mut s).is_empty());
}

#[test]
fn abort_task_of_a_running_command_answers_after_it_and_suppresses_its_status() {
    let mut s = session(|_| {});
    s.receive(cmd(1, 1, &read10(1), true, false, 512, vec![])).unwrap();
    work(&mut s);
    let abort = TaskMgmt {
        immediate: true,
        function: 0x81,
        lun: LUN0,
        itt: 2,
        referenced_itt: 1,
        cmd_sn: 2,
        exp_stat_sn: 0,
        ref_cmd_sn: 1,
    };
    s.receive(Pdu::TaskMgmt(abort.clone())).unwrap();
    assert!(sent(&mut s).is_empty(), "waits for the task");
    s.complete(1, 0, &[], &[0; 512]);
    let r = sent(&mut s);
    assert_eq!(r.len(), 1, "no Data-In or status for the aborted read");
    assert_eq!(r[0].bhs.opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(r[0].bhs.get(field::RESPONSE), 0);
    // The task is gone now: task does not exist.
    s.receive(Pdu::TaskMgmt(TaskMgmt { itt: 3, ..abort })).unwrap();
    assert_eq!(sent(&mut s)[0].bhs.get(field::RESPONSE), 1);
}

#[test]
fn a_lun_reset_waits_for_the_reset_and_the_tasks() {
    let mut s = session(|_| {});
    s.receive(cmd(1, 1, &[0u8; 6], false, false, 0, vec![])).unwrap();
    work(&mut s);
    let reset = TaskMgmt {
        immediate: true,
        function: 0x85,
        lun: LUN0,
        itt: 2,
        referenced_itt: RESERVED_TAG,
        cmd_sn: 2,
        exp_stat_sn: 0,
        ref_cmd_sn: 0,
    };
    s.receive(Pdu::TaskMgmt(reset)).unwrap();
    assert_eq!(work(&mut s), [Work::Reset { tmf: 2, luns: vec![0] }]);
    s.reset_done(2);
    assert!(sent(&mut s).is_empty(), "the TUR is still running");
    s.complete(1, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.opcode(), Some(Opcode::TaskMgmtResponse));
}

#[test]
fn nop_out_pings_are_echoed_and_the_targets_own_are_answered() {
    let mut s = session(|_| {});
    let nop =
        NopOut { immediate: true, lun: 0, itt: 4, ttt: RESERVED_TAG, cmd_sn: 1, exp_stat_sn: 0, data: b"hi".to_vec() };
    s.receive(Pdu::NopOut(nop)).unwrap();
    let r = sent(&mut s);
    assert_eq!(r[0].bhs.opcode(), Some(Opcode::NopIn));
    assert_eq!((r[0].bhs.itt(), &r[0].data[..]), (4, &b"hi"[..]));
    assert!(s.ping());
    assert!(!s.ping(), "the first is unanswered");
    let ttt = sent(&mut s)[0].bhs.get32(field::TTT);
    let answer = NopOut { immediate: true, lun: 0, itt: RESERVED_TAG, ttt, cmd_sn: 1, exp_stat_sn: 0, data: vec![] };
    s.receive(Pdu::NopOut(answer)).unwrap();
    assert!(sent(&mut s).is_empty(), "an answer is not answered");
    assert!(s.ping());
}

#[test]
fn logout_waits_for_running_commands() {
    let mut s = session(|_| {});
    s.receive(cmd(1, 1, &[0u8; 6], false, false, 0, vec![])).unwrap();
    work(&mut s);
    let lo = crate::pdu::LogoutRequest { immediate: true, reason: 0x80, itt: 2, cid: 0, cmd_sn: 2, exp_stat_sn: 0 };
    s.receive(Pdu::Logout(lo)).unwrap();
    assert!(work(&mut s).is_empty());
    s.complete(1, 0, &[], &[]);
    let r = sent(&mut s);
    assert_eq!(r.last().unwrap().bhs.opcode(), Some(Opcode::LogoutResponse));
    assert_eq!(work(&mut s), [Work::Close(Closing::Logout)]);
}

#[test]
fn send_targets_lists_the_directory() {
    let mut s = session(|_| {});
    let t = crate::pdu::TextRequest {
        immediate: true,
        final_bit: true,
        continue_bit: false,
        lun: 0,
        itt: 1,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: b"SendTargets=All\0".to_vec(),
    };
    s.receive(Pdu::Text(t)).unwrap();
    let r = sent(&mut s);
    let pairs = text::parse(&r[0].data).unwrap();
    assert_eq!(
        pairs,
        [
            ("TargetName".to_string(), "iqn.t:demo.t0".to_string()),
            ("TargetAddress".to_string(), "127.0.0.1:3260,1".to_string())
        ]
    );
}

#[test]
fn luns_decode_from_peripheral_and_flat_addressing() {
    assert_eq!(decode_lun(0), 0);
    assert_eq!(decode_lun(0x0005_0000_0000_0000), 5);
    assert_eq!(decode_lun(0x4105_0000_0000_0000), 0x105);
    assert_eq!(decode_lun(0x0000_0001_0000_0000), u16::MAX);
}
