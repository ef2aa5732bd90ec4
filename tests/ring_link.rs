//! The multi-threaded initiator (`gateway::ring::link`) against a real gateway: polling for
//! a lone command, data placed in or lent to the data area, waiting for its pages, and
//! holding I/O while the gateway is away.

use std::time::{Duration, Instant};

use gateway::ring::initiator::Data;
use gateway::ring::server::{Server, ServerOptions};
use gateway::storage;

#[path = "support/ring.rs"]
mod fixture;
use fixture::*;

/// A front-end thread that polls for its lone command gets the callback on its own thread
/// before `submit_polling` returns, so no completion-thread wakeup sits on the I/O's path.
/// Each time, the doorbell is armed again on the way out: a plain submission right after,
/// completed by the sleeping completion thread, finishes at once rather than at its 100 ms
/// idle tick.
#[test]
fn a_lone_command_polled_for_completes_on_the_submitting_thread_and_rearms_the_doorbell() {
    use gateway::ring::link::{Command, Outcome, Polled};
    use std::sync::mpsc;
    use std::thread::ThreadId;

    let f = start();
    let link = link_n1(&f, 16 << 20, Duration::from_secs(10));
    let q = link.queue();
    let me = std::thread::current().id();

    // Submits; returns the callback's thread and the outcome.
    let send = |cmd: Command<'_>, spin: Duration| -> (ThreadId, Outcome) {
        let (tx, rx) = mpsc::channel::<(ThreadId, Outcome)>();
        let polled = q.submit_polling(cmd, Box::new(move |o| tx.send((std::thread::current().id(), o)).unwrap()), spin);
        let expected = if spin.is_zero() { Polled::NotTried } else { Polled::Completed };
        assert_eq!(polled, expected);
        rx.recv_timeout(Duration::from_secs(10)).expect("the command completes")
    };
    let data = pattern(4096, 7);
    // A generous spin: the gateway answers a 4 KiB I/O in microseconds.
    let spin = Duration::from_secs(5);
    let (mut polled_here, mut plain) = (0, Duration::ZERO);
    for round in 0..10u64 {
        // The completion thread, woken by the last plain command, goes back to sleep. Awake,
        // it may take a STAT first: the poller then returns with the command done elsewhere.
        std::thread::sleep(Duration::from_millis(20));
        let write = scsi::build::rw16(0x8A, round, 8, false);
        let (thread, o) = send(Command { target: 0, lun: 0, cdb: &write, out: &data, in_len: 0 }, spin);
        polled_here += usize::from(thread == me);
        assert_eq!(o.result.unwrap().status, 0);
        let read = scsi::build::rw16(0x88, round, 8, false);
        let (thread, o) = send(Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 4096 }, spin);
        polled_here += usize::from(thread == me);
        assert_eq!(o.data, data);

        // Without polling, the completion thread answers.
        let t = std::time::Instant::now();
        let (thread, o) = send(Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 4096 }, Duration::ZERO);
        plain += t.elapsed();
        assert_ne!(thread, me);
        assert_eq!(o.data, data);
    }
    // Without polling none would be; a busy machine may let the completion thread win a few.
    assert!(polled_here >= 16, "only {polled_here} of 20 polled commands completed on the submitting thread");
    // An unarmed doorbell would cost an idle tick each: a second in all.
    assert!(plain < Duration::from_millis(500), "plain submissions after polling took {plain:?}");
    link.close();
}

#[test]
fn data_placed_in_the_area_or_left_there_round_trips_and_every_page_comes_back() {
    use gateway::ring::link::{Command, LinkError, Placed};
    use gateway::ring::proto::Region;

    let f = start();
    let link = link_n1(&f, 4 << 20, Duration::from_secs(10));
    let q = link.queue();

    for round in 0..8u8 {
        // A page of something else, then the payload, as a FUSE thread lays a WRITE out.
        let r = q.reserve((1 << 20) + 4096).expect("room in the data area");
        let data = pattern(64 << 10, round);
        let at = Region { offset: r.region.offset + 4096, len: data.len() as u32 };
        r.area.write(at.offset, &data).unwrap();
        q.release(r.generation, &[Region { offset: r.region.offset, len: 4096 }]);
        q.release(r.generation, &[Region { offset: at.offset + (64 << 10), len: (1 << 20) - (64 << 10) }]);
        let lba = u64::from(round) * 128;
        let write = scsi::build::rw16(0x8A, lba, 128, false);
        let placed = Placed { data: at, hold: at, generation: r.generation };
        let (tx, rx) = std::sync::mpsc::channel();
        let cmd = Command { target: 0, lun: 0, cdb: &write, out: &[], in_len: 0 };
        q.submit_placed(cmd, placed, Box::new(move |o| tx.send(o).unwrap()), Duration::ZERO);
        let o = rx.recv_timeout(Duration::from_secs(10)).expect("the write completes");
        assert_eq!(o.result.unwrap().status, 0);
        let read = scsi::build::rw16(0x88, lba, 128, false);
        let o = q.execute(Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 64 << 10 });
        assert_eq!(o.data, data, "round {round}");
        // Read back in place: the data is left in the area until the outcome is dropped.
        let (tx, rx) = std::sync::mpsc::channel();
        let cmd = Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 64 << 10 };
        q.submit_read_in_place(cmd, Box::new(move |o| tx.send(o).unwrap()), Duration::ZERO);
        let mut o = rx.recv_timeout(Duration::from_secs(10)).expect("the read completes");
        assert!(o.data.is_empty());
        let d = o.in_area.take().expect("data-in left in the area");
        let mut back = vec![0u8; d.len() as usize];
        d.area().read(d.offset(), &mut back).unwrap();
        assert_eq!(back, data, "round {round}, in place");
    }
    // Every page went back: the whole area can be taken in one piece.
    let all = q.reserve(4 << 20).expect("no page of the data area was lost");
    // Pages of another connection are refused, not sent.
    let stale = Placed { data: all.region, hold: all.region, generation: all.generation + 1 };
    let (tx, rx) = std::sync::mpsc::channel();
    let write = scsi::build::rw16(0x8A, 0, 8, false);
    let cmd = Command { target: 0, lun: 0, cdb: &write, out: &[], in_len: 0 };
    q.submit_placed(cmd, stale, Box::new(move |o| tx.send(o).unwrap()), Duration::ZERO);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().result.unwrap_err(), LinkError::Down);
    q.release(all.generation, &[all.region]);
    link.close();
}

/// Pages a caller keeps (a FUSE ring entry's buffer) lent to commands: a WRITE goes out
/// from them, a READ's data-in lands in them, and neither command frees them; lent pages
/// of a connection that has gone are sent as a copy from the caller's mapping instead.
#[test]
fn lent_pages_carry_data_both_ways_and_stay_the_callers() {
    use gateway::ring::link::{Command, Lent, LentData};

    let f = start();
    let link = link_n1(&f, 4 << 20, Duration::from_secs(10));
    let q = link.queue();
    let r = q.reserve(64 << 10).expect("room in the data area");
    let send = |cmd: Command<'_>, lent: Lent| {
        let (tx, rx) = std::sync::mpsc::channel();
        q.submit_lent(cmd, lent, (&r.area, r.region.offset), Box::new(move |o| tx.send(o).unwrap()), Duration::ZERO);
        rx.recv_timeout(Duration::from_secs(10)).expect("the command completes")
    };
    let data = pattern(64 << 10, 9);
    r.area.write(r.region.offset, &data).unwrap();
    let write = scsi::build::rw16(0x8A, 256, 128, false);
    let out = Lent { data: LentData::Out(r.region), generation: r.generation };
    let o = send(Command { target: 0, lun: 0, cdb: &write, out: &[], in_len: 0 }, out);
    assert_eq!(o.result.unwrap().status, 0);

    r.area.write(r.region.offset, &[0u8; 64 << 10]).unwrap();
    let read = scsi::build::rw16(0x88, 256, 128, false);
    let into = Lent { data: LentData::In(r.region), generation: r.generation };
    let o = send(Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 64 << 10 }, into);
    assert!(o.lent && o.data.is_empty(), "the data-in was left in the lent pages");
    assert_eq!(o.result.unwrap().transferred, 64 << 10);
    let mut back = vec![0u8; 64 << 10];
    r.area.read(r.region.offset, &mut back).unwrap();
    assert_eq!(back, data);

    // Neither command freed the pages: the rest of the area is all that can be taken.
    assert!(q.reserve(4 << 20).is_none(), "a lent command gave the caller's pages back");
    let rest = q.reserve((4 << 20) - (64 << 10)).expect("every other page is free");
    q.release(rest.generation, &[rest.region]);

    // Pages of a connection that has gone: sent as a copy, and read back as bytes.
    let stale = Lent { data: LentData::Out(r.region), generation: r.generation + 1 };
    let write = scsi::build::rw16(0x8A, 512, 128, false);
    let o = send(Command { target: 0, lun: 0, cdb: &write, out: &[], in_len: 0 }, stale);
    assert_eq!(o.result.unwrap().status, 0);
    let read = scsi::build::rw16(0x88, 512, 128, false);
    let stale = Lent { data: LentData::In(r.region), generation: r.generation + 1 };
    let o = send(Command { target: 0, lun: 0, cdb: &read, out: &[], in_len: 64 << 10 }, stale);
    assert!(!o.lent);
    assert_eq!(o.data, data);
    q.release(r.generation, &[r.region]);
    link.close();
}

/// Submitters that find no room in the data area wait for it and are woken when pages come
/// back, whether a reservation is released or commands complete: none waits out its I/O
/// timeout (a missed wake would end in `LinkError::Timeout` after 20 s).
#[test]
fn submitters_waiting_for_data_area_pages_are_woken_when_pages_come_back() {
    use gateway::ring::link::Command;
    use std::time::Instant;

    let f = start();
    let link = link_n1(&f, 1 << 20, Duration::from_secs(20));
    let q = link.queue();

    // The whole area reserved: a write has to wait until the reservation goes back.
    let all = q.reserve(1 << 20).expect("the whole data area");
    let t = Instant::now();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let data = pattern(512 << 10, 1);
            let write = scsi::build::rw16(0x8A, 0, 1024, false);
            q.execute(Command { target: 0, lun: 0, cdb: &write, out: &data, in_len: 0 })
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the write did not wait for room in the data area");
        q.release(all.generation, &[all.region]);
        assert_eq!(waiter.join().unwrap().result.unwrap().status, 0);
    });
    assert!(t.elapsed() < Duration::from_secs(5), "woken only after {:?}", t.elapsed());

    // Eight writers of 512 KiB share a 1 MiB area: most of the time they wait for pages
    // that completions give back.
    let t = Instant::now();
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                s.spawn(move || {
                    for i in 0..4u64 {
                        let data = pattern(512 << 10, (w * 4 + i) as u8);
                        let write = scsi::build::rw16(0x8A, (w * 4 + i) * 1024, 1024, false);
                        let o = q.execute(Command { target: 0, lun: 0, cdb: &write, out: &data, in_len: 0 });
                        assert_eq!(o.result.unwrap().status, 0, "writer {w}, write {i}");
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
    });
    assert!(t.elapsed() < Duration::from_secs(10), "32 writes took {:?}", t.elapsed());
    link.close();
}

/// A link of node n1 (PAN beta) with `queues` queue pairs that holds I/O through outages
/// for `hold`.
fn holding_link(f: &Fixture, queues: usize, hold: Duration) -> std::sync::Arc<gateway::ring::link::Link> {
    use gateway::ring::link::{Link, LinkOptions};
    let link = Link::connect(LinkOptions {
        socket: f.socket.clone(),
        alternates: Vec::new(),
        connect: opts("beta", "n1", CRED_B),
        queues,
        io_timeout: Duration::from_secs(5),
        retry: true,
        reconnect_timeout: hold,
    })
    .unwrap();
    std::sync::Arc::new(link)
}

/// WRITE(16) of `data` at `lba` through the calling thread's queue pair.
fn link_write(link: &gateway::ring::link::Link, lba: u64, data: &[u8]) -> gateway::ring::link::Outcome {
    let cdb = scsi::build::write16(lba, (data.len() / 512) as u32, false);
    link.queue().execute(gateway::ring::link::Command { target: 0, lun: 0, cdb: &cdb, out: data, in_len: 0 })
}

#[test]
fn a_link_holds_io_while_the_gateway_restarts_and_sends_it_again() {
    let mut f = start();
    let link = holding_link(&f, 2, Duration::from_secs(20));
    // Held while down: writes from two threads (so both queue pairs), sent before the stop
    // or during the outage, all answered GOOD once the gateway is back.
    let write = |k: u64| {
        let link = link.clone();
        std::thread::spawn(move || link_write(&link, 64 * k, &pattern(8192, k as u8 + 40)))
    };
    let server = f.server.take().unwrap();
    let mut writers: Vec<_> = (0..2).map(write).collect();
    let images = server.shutdown().unwrap();
    // These two find the queue pairs down (or going): they wait for the reconnect.
    writers.extend((2..4).map(write));
    std::thread::sleep(Duration::from_millis(400));
    assert!(writers.iter().skip(2).all(|w| !w.is_finished()), "held, not failed, while the gateway is down");
    let cfg = config(f._dir.path());
    let maps = storage::open_all(&cfg, f._dir.path()).unwrap().1;
    let registry = gateway::registry::Registry::from_config(&cfg, &maps);
    f.server = Some(Server::start(images, registry, ServerOptions::new(&f.socket)).unwrap());
    for w in writers {
        let outcome = w.join().unwrap();
        assert!(outcome.result.as_ref().is_ok_and(|r| r.good()), "{:?}", outcome.result);
    }
    let mut i = connect(&f, "beta", "n1", CRED_B);
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    for k in 0..4u64 {
        assert_eq!(i.read(0, 0, 64 * k, 8192).unwrap().1, pattern(8192, k as u8 + 40), "write {k}");
    }
}

#[test]
fn a_link_fails_held_io_once_the_gateway_stays_away_past_the_reconnect_timeout() {
    let mut f = start();
    let link = holding_link(&f, 1, Duration::from_millis(800));
    let _ = f.server.take().unwrap().shutdown().unwrap();
    let started = Instant::now();
    let outcome = link_write(&link, 0, &pattern(4096, 1));
    let took = started.elapsed();
    assert_eq!(outcome.result.err(), Some(gateway::ring::link::LinkError::Down));
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "failed after {took:?}");
}

#[test]
fn closing_a_link_completes_held_io() {
    let mut f = start();
    let link = holding_link(&f, 1, Duration::from_secs(30));
    let _ = f.server.take().unwrap().shutdown().unwrap();
    let writer = {
        let link = link.clone();
        std::thread::spawn(move || link_write(&link, 0, &pattern(4096, 3)))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "held while the gateway is away");
    link.close();
    let outcome = writer.join().unwrap();
    assert!(
        matches!(outcome.result, Err(gateway::ring::link::LinkError::Closing | gateway::ring::link::LinkError::Down)),
        "{:?}",
        outcome.result
    );
}
