//! The ring protocol end to end: a real gateway server on a Unix socket, file images on the
//! io_uring engine, and initiators over shared memory.

use std::time::{Duration, Instant};

use gateway::ring::initiator::{ConnectOptions, Data, Initiator, InitiatorError};
use gateway::ring::proto::{self, Region};
use gateway::ring::server::control_result;
use scsi::Asc;

#[path = "support/ring.rs"]
mod fixture;
use fixture::*;

#[test]
fn handshake_reports_the_nodes_map() {
    let f = start();
    let i = connect(&f, "alpha", "n1", CRED_A);
    assert_eq!(i.queue_depth(), 256);
    let luns: Vec<_> = i.luns().iter().map(|l| (l.target, l.lun, l.block_size, l.blocks, l.read_only)).collect();
    assert_eq!(luns, vec![(0, 0, 512, 32768, false), (0, 1, 4096, 4096, true)]);
}

#[test]
fn wrong_credential_pan_or_node_is_refused_with_a_reason() {
    let f = start();
    for (pan, node, cred, want) in [
        ("alpha", "n1", CRED_B, "wrong credential"),
        ("gamma", "n1", CRED_A, "no node \"n1\" in PAN \"gamma\""),
        ("alpha", "n9", CRED_A, "no node \"n9\""),
    ] {
        match Initiator::connect(&f.socket, &opts(pan, node, cred)) {
            Err(InitiatorError::Refused(why)) => assert!(why.contains(want), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn every_scsi_family_round_trips_on_both_write_paths() {
    let f = start();
    let mut i = connect(&f, "alpha", "n1", CRED_A);
    // Power-on unit attention first, then TEST UNIT READY is good.
    let tur = i.execute(0, 0, &[0; 6], Data::None).unwrap();
    assert_eq!(sense_of(&tur), (0x6, Asc::POWER_ON_RESET));
    assert!(i.execute(0, 0, &[0; 6], Data::None).unwrap().good());
    let (r, inq) = i.inquiry(0, 0, None).unwrap();
    assert!(r.good());
    assert_eq!(&inq[8..16], b"PANGATE ");
    let (r, vpd) = i.inquiry(0, 0, Some(0x83)).unwrap();
    assert!(r.good() && vpd[1] == 0x83);
    assert_eq!(i.read_capacity(0, 0).unwrap().1, Some((32768, 512)));

    // Held for the whole test, so that a write's region of the data area never sits at the
    // same offset as the staging buffer the gateway hands out for it: data taken from the
    // wrong one of the two cannot pass for the right one.
    let _hold = i.alloc(8192).unwrap();
    for staged in [false, true] {
        let data = pattern(64 << 10, u8::from(staged) + 1);
        let lba = if staged { 1000 } else { 0 };
        assert!(i.write(0, 0, lba, &data, false, staged).unwrap().good());
        let (r, back) = i.read(0, 0, lba, data.len() as u32).unwrap();
        assert!(r.good());
        assert_eq!(r.transferred, data.len() as u32);
        assert_eq!(back, data, "staged={staged}");
    }
    assert!(i.write(0, 0, 5000, &pattern(4096, 9), true, false).unwrap().good(), "FUA write");
    assert!(i.flush(0, 0).unwrap().good());
    assert!(i.unmap(0, 0, 0, 128).unwrap().good());
    assert!(i.read(0, 0, 0, 65536).unwrap().1.iter().all(|&b| b == 0));
    // A command that fails on the LUN comes back with its sense.
    let (r, _) = i.read(0, 0, 40000, 512).unwrap();
    assert_eq!(sense_of(&r), (0x5, Asc::LBA_OUT_OF_RANGE));
    // A READ whose data area is short of its blocks, or sent as DATA_OUT, is refused.
    let r = i.execute(0, 0, &proto_read(0), Data::None).unwrap();
    assert_eq!(sense_of(&r), (0x5, Asc::INVALID_FIELD_IN_CDB));
    let area = i.alloc(512).unwrap();
    let r = i.execute(0, 0, &proto_read(0), Data::Out { region: area, staged: false }).unwrap();
    i.free(area);
    assert_eq!(sense_of(&r), (0x5, Asc::INVALID_FIELD_IN_CDB));
    // REPORT LUNS lists the node's own LUNs of the target.
    let (r, luns) = i.data_in(0, 0, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256).unwrap();
    assert!(r.good());
    assert_eq!(&luns[..4], &16u32.to_be_bytes());
}

fn proto_read(lba: u64) -> [u8; 16] {
    scsi::build::rw16(0x88, lba, 1, false)
}

#[test]
fn control_messages() {
    let f = start();
    let mut i = connect(&f, "alpha", "n1", CRED_A);
    let hb = i.heartbeat().unwrap();
    assert_eq!(hb.control_result, control_result::DONE);
    let cfg = i.report_config().unwrap();
    assert_eq!(cfg.len(), 2);
    assert_eq!((cfg[1].target, cfg[1].lun, cfg[1].read_only, cfg[1].blocks), (0, 1, true, 4096));
    // LUN RESET raises a unit attention.
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    let seq = i.control(proto::ControlOp::LunReset, 0, 0, 0, None).unwrap();
    assert_eq!(i.wait_for(seq, Duration::from_secs(5)).unwrap().control_result, control_result::DONE);
    assert_eq!(sense_of(&i.execute(0, 0, &[0; 6], Data::None).unwrap()), (0x6, Asc::LUN_RESET));
    // Aborting an unknown task says so.
    let seq = i.control(proto::ControlOp::AbortTask, 0, 0, 424242, None).unwrap();
    assert_eq!(i.wait_for(seq, Duration::from_secs(5)).unwrap().control_result, control_result::NOT_FOUND);
}

#[test]
fn access_control_across_pans_and_read_only_maps() {
    let f = start();
    let mut b = connect(&f, "beta", "n1", CRED_B);
    b.write(0, 0, 0, &pattern(4096, 77), false, false).unwrap();
    let mut a = connect(&f, "alpha", "n1", CRED_A);
    a.execute(0, 0, &[0; 6], Data::None).unwrap();
    // Alpha's node probes every (target, LUN) beta's node has and more: only its own map
    // answers; everything else is LOGICAL UNIT NOT SUPPORTED.
    for target in 0..4u16 {
        for lun in 0..10u16 {
            let mine = target == 0 && lun <= 1;
            // TEST UNIT READY takes the power-on unit attention of the node's own LUNs.
            let cdb: &[u8] = if mine { &[0; 6] } else { &proto_read(0) };
            let r = a.execute(target, lun, cdb, Data::None).unwrap();
            if !mine {
                assert_eq!(sense_of(&r), (0x5, Asc::LUN_NOT_SUPPORTED), "target {target} lun {lun}");
            }
        }
    }
    // Alpha's (0,0) is its own image, not beta's.
    let (_, d) = a.read(0, 0, 0, 4096).unwrap();
    assert_ne!(d, pattern(4096, 77));
    // Read-only map: writes are refused, reads work.
    let r = a.write(0, 1, 0, &pattern(4096, 1), false, false).unwrap();
    assert_eq!(sense_of(&r), (0x7, Asc::WRITE_PROTECTED));
    let r = a.read(0, 1, 0, 4096).unwrap().0;
    assert!(r.good(), "{:02x?}", r);
    // INQUIRY of an unmapped LUN reports an unconnected unit.
    let (r, inq) = a.inquiry(3, 3, None).unwrap();
    assert!(r.good());
    assert_eq!(inq[0], 0x7F);
}

#[test]
fn a_hostile_node_loses_only_its_connection() {
    let f = start();
    let mut good = connect(&f, "beta", "n1", CRED_B);
    assert_eq!(sense_of(&good.execute(0, 0, &[0; 6], Data::None).unwrap()), (0x6, Asc::POWER_ON_RESET));
    let mut bad = connect(&f, "alpha", "n1", CRED_A);
    bad.execute(0, 0, &[0; 6], Data::None).unwrap();
    // A region outside the data area.
    let out_of_area = Region { offset: 1 << 40, len: 4096 };
    bad.submit(0, 0, &proto_read(0), Data::In(out_of_area)).unwrap();
    let mut out = Vec::new();
    let err = loop {
        match bad.poll(&mut out, Duration::from_secs(5)) {
            Err(e) => break e,
            Ok(()) if out.is_empty() => continue,
            Ok(()) => panic!("the gateway answered a command with a region outside the data area: {out:?}"),
        }
    };
    assert!(matches!(err, InitiatorError::Closed), "{err:?}");
    // The healthy node goes on.
    for k in 0..20u64 {
        let data = pattern(4096, k as u8);
        assert!(good.write(0, 0, k * 8, &data, false, false).unwrap().good());
        assert_eq!(good.read(0, 0, k * 8, 4096).unwrap().1, data);
    }
}

#[test]
fn shutdown_drains_and_flushes() {
    let mut f = start();
    let mut i = connect(&f, "alpha", "n1", CRED_A);
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    let data = pattern(1 << 20, 3);
    let r = i.alloc(data.len() as u32).unwrap();
    i.write_data(r, &data).unwrap();
    let seq = i.submit(0, 0, &scsi::build::rw16(0x8A, 0, 2048, false), Data::Out { region: r, staged: false }).unwrap();
    let resp = i.wait_for(seq, Duration::from_secs(10)).unwrap();
    assert!(resp.good());
    let images = f.server.take().unwrap().shutdown().unwrap();
    assert_eq!(images.len(), 3);
    if images_on_disk() {
        let on_disk = std::fs::read(&images[0].path).unwrap();
        assert_eq!(&on_disk[..data.len()], &data[..]);
    }
    assert!(!f.socket.exists(), "the socket is removed");
}

// ---- Misbehaving nodes -------------------------------------------------------------------

use gateway::ring::proto::{Cmd, Message, SLOT_SIZE};
use gateway::ring::spsc::{cursor_offsets, slot_offset, RingId};

/// Puts raw bytes in the next CMD slot and publishes it, as a broken node would.
fn raw_cmd(i: &Initiator, cursor: u32, slot: &[u8; SLOT_SIZE]) {
    let ring = i.raw_ring();
    ring.write(slot_offset(RingId::Cmd, i.queue_depth(), cursor), slot).unwrap();
    ring.store_release(cursor_offsets(RingId::Cmd).0, cursor + 1).unwrap();
}

fn healthy_io(good: &mut Initiator, rounds: u64) {
    for k in 0..rounds {
        let data = pattern(4096, k as u8 ^ 0x5A);
        assert!(good.write(0, 0, 4096 + k * 8, &data, false, k % 2 == 1).unwrap().good());
        assert_eq!(good.read(0, 0, 4096 + k * 8, 4096).unwrap().1, data);
    }
}

fn hostile_case(setup: impl FnOnce(&mut Initiator)) {
    let f = start();
    let mut good = connect(&f, "beta", "n1", CRED_B);
    good.execute(0, 0, &[0; 6], Data::None).unwrap();
    let mut bad = connect(&f, "alpha", "n1", CRED_A);
    bad.execute(0, 0, &[0; 6], Data::None).unwrap();
    healthy_io(&mut good, 5);
    setup(&mut bad);
    // Watch only the socket: a misbehaving node does not reap its STATs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match bad.check_connected() {
            Err(InitiatorError::Closed) => break,
            Err(other) => panic!("expected the connection to be closed, got {other:?}"),
            Ok(()) => {
                assert!(std::time::Instant::now() < deadline, "the gateway kept a misbehaving node connected");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    healthy_io(&mut good, 20);
}

#[test]
fn garbage_in_a_slot_closes_only_that_node() {
    hostile_case(|bad| {
        let mut slot = [0u8; SLOT_SIZE];
        for (k, b) in slot.iter_mut().enumerate() {
            *b = (k as u8).wrapping_mul(151).wrapping_add(7);
        }
        raw_cmd(bad, 1, &slot);
    });
}

#[test]
fn a_length_that_lies_closes_only_that_node() {
    hostile_case(|bad| {
        let cmd = Cmd::scsi(99, 0, 0, &[0; 6], 0, &[]).unwrap();
        let mut slot = [0u8; SLOT_SIZE];
        Message::Cmd(cmd).emit(&mut slot);
        slot[8..12].copy_from_slice(&4000u32.to_le_bytes());
        raw_cmd(bad, 1, &slot);
    });
}

#[test]
fn a_cursor_moving_backwards_closes_only_that_node() {
    hostile_case(|bad| {
        // One real command went through (cursor 1); now claim the producer is at 0 again
        // after pretending to have produced more.
        let off = cursor_offsets(RingId::Cmd).0;
        bad.raw_ring().store_release(off, u32::MAX - 5).unwrap();
    });
}

#[test]
fn a_cursor_past_the_ring_closes_only_that_node() {
    hostile_case(|bad| {
        let off = cursor_offsets(RingId::Cmd).0;
        bad.raw_ring().store_release(off, 1 + bad.queue_depth() + 1).unwrap();
    });
}

#[test]
fn exceeding_the_queue_depth_closes_only_that_node() {
    hostile_case(|bad| {
        // Never consume STATs, and keep sending: the node soon has more commands
        // outstanding than its queue depth.
        let depth = bad.queue_depth();
        for k in 0..=depth + 1 {
            let cmd = Cmd::scsi(1000 + k, 0, 0, &[0; 6], 0, &[]).unwrap();
            let mut slot = [0u8; SLOT_SIZE];
            Message::Cmd(cmd).emit(&mut slot);
            // Wait (bounded) for ring room as an honest producer would, then publish.
            let (prod_off, cons_off) = cursor_offsets(RingId::Cmd);
            let cursor = 1 + k;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while cursor.wrapping_sub(bad.raw_ring().load_acquire(cons_off).unwrap()) >= depth {
                if std::time::Instant::now() > deadline {
                    return; // the gateway stopped consuming: it has closed us
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            bad.raw_ring().write(slot_offset(RingId::Cmd, depth, cursor), &slot).unwrap();
            bad.raw_ring().store_release(prod_off, cursor + 1).unwrap();
            let _ = bad.kick();
        }
    });
}

#[test]
fn a_node_dying_with_io_in_flight_leaves_others_unharmed() {
    let f = start();
    let mut good = connect(&f, "beta", "n1", CRED_B);
    good.execute(0, 0, &[0; 6], Data::None).unwrap();
    for _ in 0..5 {
        let mut bad = connect(&f, "alpha", "n1", CRED_A);
        bad.execute(0, 0, &[0; 6], Data::None).unwrap();
        let r = bad.alloc(1 << 20).unwrap();
        for k in 0..32u64 {
            bad.queue(0, 0, &scsi::build::rw16(0x8A, k * 2048, 2048, false), Data::Out { region: r, staged: false })
                .unwrap();
        }
        bad.kick().unwrap();
        drop(bad);
    }
    healthy_io(&mut good, 20);
}

/// Fencing a node (a failover) closes its queue pairs and returns only once every command
/// they started has finished: nothing of the fenced node lands on the image afterwards.
#[test]
fn fencing_closes_the_nodes_queue_pairs_and_nothing_of_it_lands_afterwards() {
    let f = start();
    let images = f.server.as_ref().unwrap().images();
    let file = f._dir.path().join("images/a0.img");
    for round in 0..4u8 {
        let mut node = connect(&f, "alpha", "n1", CRED_A);
        node.execute(0, 0, &[0; 6], Data::None).unwrap();
        // Sixteen 1 MiB regions of different bytes, written over and over to shifting
        // places: a write that lands late changes the file.
        let regions: Vec<_> = (0..15u8)
            .map(|i| {
                let r = node.alloc(1 << 20).unwrap();
                node.write_data(r, &pattern(1 << 20, round.wrapping_mul(16).wrapping_add(i))).unwrap();
                r
            })
            .collect();
        for k in 0..240u64 {
            let (region, lba) = (regions[(k % 15) as usize], (k * 7 % 16) * 2048);
            node.queue(0, 0, &scsi::build::rw16(0x8A, lba, 2048, false), Data::Out { region, staged: false }).unwrap();
        }
        node.kick().unwrap();
        // Once the first write is answered, the rest are being taken and run.
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.is_empty() && std::time::Instant::now() < deadline {
            node.poll(&mut out, Duration::from_millis(1)).unwrap();
        }
        assert!(!out.is_empty(), "no write was answered");
        images.fence("alpha", "n1").unwrap();
        assert_eq!(images.liveness("alpha", "n1").queue_pairs, 0, "its queue pairs are closed");
        if images_on_disk() {
            let at_fence = std::fs::read(&file).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert!(std::fs::read(&file).unwrap() == at_fence, "a write landed after the fence returned");
        }
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            node.poll(&mut out, Duration::ZERO).is_err() || node.check_connected().is_err()
        });
        assert!(gone, "the node sees its queue pair closed");
    }
}

/// Workers that never spin sleep between every command: in their io_uring, and (as where
/// io_uring is missing) in poll(2). Either way doorbells and backend completions wake them,
/// and a node that dies with I/O in flight is seen to hang up while others carry on.
#[test]
fn sleeping_workers_wake_for_doorbells_completions_and_hang_ups_in_both_wait_modes() {
    for worker_ring in [true, false] {
        let metrics = std::sync::Arc::new(metrics::Metrics::new(scsi::opcodes::name, "test"));
        let m = metrics.clone();
        let f = start_with(move |o| {
            o.spin = Duration::ZERO;
            o.worker_ring = worker_ring;
            o.metrics = m;
        });
        let mut good = connect(&f, "beta", "n1", CRED_B);
        good.execute(0, 0, &[0; 6], Data::None).unwrap();
        // 40 commands, each finding the worker asleep: a worker that slept through its
        // doorbell would wake only at its 500 ms timeout.
        let t = std::time::Instant::now();
        healthy_io(&mut good, 20);
        assert!(t.elapsed() < Duration::from_secs(4), "worker_ring={worker_ring}: took {:?}", t.elapsed());
        let mut bad = connect(&f, "alpha", "n1", CRED_A);
        bad.execute(0, 0, &[0; 6], Data::None).unwrap();
        let r = bad.alloc(1 << 20).unwrap();
        for k in 0..16u64 {
            let cdb = scsi::build::rw16(0x8A, k * 2048, 2048, false);
            bad.queue(0, 0, &cdb, Data::Out { region: r, staged: false }).unwrap();
        }
        bad.kick().unwrap();
        drop(bad);
        let gone = r#"pangate_ring_connections{pan="alpha",node="n1"} 0"#;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !metrics.render().contains(gone) {
            assert!(std::time::Instant::now() < deadline, "worker_ring={worker_ring}: the hang-up went unseen");
            std::thread::sleep(Duration::from_millis(5));
        }
        healthy_io(&mut good, 20);
    }
}

#[test]
fn data_beyond_the_data_area_in_flight_gets_busy_not_memory() {
    let f = start();
    let mut i = connect(&f, "alpha", "n1", CRED_A);
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    // Segments may overlap, so a node can name far more bytes than its data area holds.
    // Each CMD names 28 × 1 MiB segments over the same MiB: 28 MiB against a 16 MiB area.
    let whole = Region { offset: 0, len: 1 << 20 };
    let cmd =
        Cmd::scsi(77, 0, 0, &scsi::build::rw16(0x8A, 0, 2048, false), proto::FLAG_DATA_OUT, &[whole; 28]).unwrap();
    let mut slot = [0u8; SLOT_SIZE];
    Message::Cmd(cmd).emit(&mut slot);
    raw_cmd(&i, 1, &slot);
    let _ = i.kick();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while out.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no answer");
        // The initiator did not queue seq 77 itself, so read the STAT ring directly.
        i.poll(&mut out, Duration::from_millis(50)).unwrap();
    }
    assert_eq!(out[0].seq, 77);
    assert_eq!(out[0].status, scsi::Status::Busy as u8);
    // Refused with BUSY, not closed: the node did nothing illegal.
    assert!(i.check_connected().is_ok());
}

// ---- Workers -----------------------------------------------------------------------------

/// Three workers, two nodes with five queue pairs each: the listener keeps a node's first
/// four beside its first image and spreads the rest over the other workers, and each image
/// has one owner, so many commands cross to another worker and back. Data, unit
/// attentions, LUN RESET and shutdown behave as with one.
#[test]
fn queue_pairs_on_every_worker_reach_each_image_through_its_owner() {
    let f = start_with(|o| o.workers = 3);
    assert_eq!(f.server.as_ref().unwrap().workers(), 3);
    // n1 maps a0 (image 0) rw and shared (image 1) ro; n2 maps shared rw at (0, 1).
    let mut queues: Vec<(Initiator, u16)> = Vec::new();
    for _ in 0..5 {
        queues.push((connect(&f, "alpha", "n1", CRED_A), 0));
        queues.push((connect(&f, "alpha", "n2", CRED_C), 1));
    }
    for (q, _) in &mut queues {
        // Each queue pair is its own nexus, with its own power-on attention per LUN.
        for lun in [0, 1] {
            let r = q.execute(0, lun, &[0; 6], Data::None).unwrap();
            if q.luns().iter().any(|l| l.lun == lun) {
                assert_eq!(sense_of(&r), (0x6, Asc::POWER_ON_RESET));
            }
        }
    }

    // Verified I/O from every queue pair at once, each in its own range of its image.
    let queues: Vec<(Initiator, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(k, (mut q, lun))| {
                s.spawn(move || {
                    let bs = if lun == 0 { 512 } else { 4096 };
                    let base = (k as u64) * (1 << 20) / bs;
                    for round in 0..100u64 {
                        let data = pattern(16 << 10, (k as u8).wrapping_mul(31).wrapping_add(round as u8));
                        let lba = base + (round % 8) * (16 << 10) / bs;
                        let r = q.write(0, lun, lba, &data, false, round % 3 == 0).unwrap();
                        assert!(r.good(), "queue {k} round {round}: {r:?}");
                        let (r, back) = q.read(0, lun, lba, data.len() as u32).unwrap();
                        assert!(r.good() && back == data, "queue {k} round {round}: read back differs");
                    }
                    (q, lun)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Growing `shared` on its owner reaches every nexus on every worker.
    let images = f.server.as_ref().unwrap().images();
    images.grow(1, 32 << 20).unwrap();
    let mut queues = queues;
    for (q, _) in &mut queues {
        assert_eq!(sense_of(&q.execute(0, 1, &[0; 6], Data::None).unwrap()), (0x6, Asc::CAPACITY_CHANGED));
        assert_eq!(q.read_capacity(0, 1).unwrap().1, Some((8192, 4096)));
    }
    // A LUN RESET from one queue pair reaches the others, wherever they are served.
    let seq = queues[1].0.control(proto::ControlOp::LunReset, 0, 1, 0, None).unwrap();
    assert_eq!(queues[1].0.wait_for(seq, Duration::from_secs(5)).unwrap().control_result, control_result::DONE);
    for (q, _) in &mut queues {
        assert_eq!(sense_of(&q.execute(0, 1, &[0; 6], Data::None).unwrap()), (0x6, Asc::LUN_RESET));
    }

    // Shutdown with writes in flight on every queue pair: each is answered, then flushed.
    let mut sent = Vec::new();
    for (k, (q, lun)) in queues.iter_mut().enumerate() {
        let lun = *lun;
        let bs = if lun == 0 { 512u64 } else { 4096 };
        let mut seqs = Vec::new();
        for j in 0..16u64 {
            let data = pattern(4096, 200 + k as u8 + j as u8);
            let region = q.alloc(4096).unwrap();
            q.write_data(region, &data).unwrap();
            let lba = ((k as u64) * (1 << 20) + j * 4096) / bs;
            let cdb = scsi::build::rw16(0x8A, lba, (4096 / bs) as u32, false);
            seqs.push(q.submit(0, lun, &cdb, Data::Out { region, staged: false }).unwrap());
        }
        sent.push(seqs);
    }
    let mut f = f;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let server = f.server.take().unwrap();
    std::thread::spawn(move || done_tx.send(server.shutdown()));
    let images = done_rx.recv_timeout(Duration::from_secs(20)).expect("shutdown finished").unwrap();
    assert_eq!(images.len(), 3, "every worker hands its images back");
    assert!(images[0].path.ends_with("a0.img") && images[1].path.ends_with("shared.img"));
    for ((q, _), seqs) in queues.iter_mut().zip(sent) {
        for seq in seqs {
            assert!(q.wait_for(seq, Duration::from_secs(5)).unwrap().good(), "write {seq} answered before exit");
        }
    }
    for (k, (_, lun)) in queues.iter().enumerate().filter(|_| images_on_disk()) {
        let path = &images[usize::from(*lun)].path;
        let on_disk = std::fs::read(path).unwrap();
        let at = k * (1 << 20);
        assert_eq!(&on_disk[at..at + 4096], &pattern(4096, 200 + k as u8)[..], "queue {k}'s write reached {path:?}");
    }
}

/// Reads what the gateway sends on a raw handshake socket until it closes (bounded).
fn drain_refusal(sock: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn silent_and_trickling_handshakes_delay_nobody_and_are_cut_off_at_their_deadline() {
    let f = start_with(|o| o.handshake_timeout = Duration::from_millis(1500));
    let silent: Vec<_> = (0..6).map(|_| std::os::unix::net::UnixStream::connect(&f.socket).unwrap()).collect();
    // One byte of a hello every 400 ms: each read is quick, the whole never ends.
    let trickler = std::os::unix::net::UnixStream::connect(&f.socket).unwrap();
    let dribble = {
        let mut t = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..20 {
                if t.write_all(&[0]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            false
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let i = connect(&f, "alpha", "n1", CRED_A);
    assert!(started.elapsed() < Duration::from_millis(500), "a new node waited {:?}", started.elapsed());
    drop(i);
    // Every one of them is cut off by its deadline, the trickler included.
    for mut s in silent {
        let t = Instant::now();
        drain_refusal(&mut s);
        assert!(t.elapsed() < Duration::from_secs(3), "a silent handshake lived {:?}", t.elapsed());
    }
    assert!(dribble.join().unwrap(), "the trickling handshake was cut off");
    let text = f.server.as_ref().unwrap().metrics().render();
    assert!(text.contains(r#"pangate_ring_handshakes_refused_total{reason="timeout"}"#), "{text}");
}

#[test]
fn handshakes_in_progress_are_capped_per_peer_uid() {
    let f = start_with(|o| {
        o.handshake_timeout = Duration::from_secs(3);
        o.max_handshakes_per_uid = 3;
    });
    let _silent: Vec<_> = (0..3).map(|_| std::os::unix::net::UnixStream::connect(&f.socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = std::os::unix::net::UnixStream::connect(&f.socket).unwrap();
    let t = Instant::now();
    let said = drain_refusal(&mut fourth);
    assert!(said.contains("too many handshakes in progress"), "{said}");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once, not at the deadline");
}

#[test]
fn queue_pairs_and_memory_per_node_are_limited_with_a_reason_and_a_metric() {
    let f = start_with(|o| {
        o.limits = gateway::ring::server::quota::Limits { queue_pairs: 2, bytes: 80 << 20 };
    });
    let a = connect(&f, "alpha", "n1", CRED_A);
    let b = connect(&f, "alpha", "n1", CRED_A);
    match Initiator::connect(&f.socket, &opts("alpha", "n1", CRED_A)) {
        Err(InitiatorError::Refused(why)) => assert!(why.contains("2 queue pairs open"), "{why}"),
        other => panic!("a third queue pair: {other:?}"),
    }
    // Another node has limits of its own.
    let other = connect(&f, "beta", "n1", CRED_B);
    drop(b);
    // Once the worker has closed it, the node may open another, within its memory.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut big = opts("alpha", "n1", CRED_A);
    big.data_bytes = 64 << 20;
    let why = loop {
        match Initiator::connect(&f.socket, &big) {
            Err(InitiatorError::Refused(why)) if why.contains("queue pairs open") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(InitiatorError::Refused(why)) => break why,
            other => panic!("a 128 MiB queue pair over an 80 MiB limit: {other:?}"),
        }
    };
    assert!(why.contains("over its limit of 83886080"), "{why}");
    let c = connect(&f, "alpha", "n1", CRED_A);
    let text = f.server.as_ref().unwrap().metrics().render();
    for reason in ["queue_pair_limit", "memory_limit"] {
        let line = format!(r#"pangate_ring_handshakes_refused_total{{reason="{reason}"}}"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
    drop((a, c, other));
}

#[test]
fn every_lun_has_one_set_of_series_from_the_start_whichever_nodes_use_it() {
    let f = start();
    let metrics = f.server.as_ref().unwrap().metrics();
    let text = metrics.render();
    for (pan, lun) in [("alpha", "a0"), ("alpha", "shared"), ("beta", "b0")] {
        let idle = format!(r#"pangate_lun_reads_total{{pan="{pan}",lun="{lun}"}} 0"#);
        assert!(text.contains(&idle), "{idle} before any node connects, in\n{text}");
    }
    // Two nodes of alpha read "shared": one set of series counts both.
    for (node, cred) in [("n1", CRED_A), ("n2", CRED_C)] {
        let mut i = connect(&f, "alpha", node, cred);
        i.execute(0, 1, &[0; 6], Data::None).unwrap();
        assert!(i.read(0, 1, 0, 4096).unwrap().0.good());
    }
    let text = metrics.render();
    assert!(text.contains(r#"pangate_lun_reads_total{pan="alpha",lun="shared"} 2"#), "{text}");
    assert!(!text.contains("node_lun="), "no per-node series by default");
}

/// Queue pairs that say they are `pangate mount`'s count as FUSE mounts, one per process
/// however many queue pairs it opens, until the last closes; other nodes do not count.
#[test]
fn fuse_mounts_are_counted_by_process_while_a_queue_pair_is_open() {
    let f = start();
    let metrics = f.server.as_ref().unwrap().metrics();
    let fuse = || ConnectOptions { client: Some("fuse".into()), ..opts("alpha", "n1", CRED_A) };
    let a = Initiator::connect(&f.socket, &fuse()).unwrap();
    let b = Initiator::connect(&f.socket, &fuse()).unwrap();
    let plain = connect(&f, "alpha", "n2", CRED_C);
    assert_eq!(metrics.fuse_mounts(), 1, "two queue pairs of one process are one mount");
    assert!(metrics.render().contains("pangate_fuse_mounts 1"), "{}", metrics.render());
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metrics.fuse_mounts(), 1, "one queue pair is still open");
    drop(b);
    while metrics.fuse_mounts() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metrics.fuse_mounts(), 0, "the mount's last queue pair closed");
    drop(plain);
}
