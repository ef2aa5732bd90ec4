//! The TCMU handler against a model of the kernel's side of target_core_user: a memfd laid
//! out as the kernel lays out the uio region (mailbox, command ring, data area), command
//! entries with iovecs written as the kernel writes them (PAD entries at the wrap), an
//! eventfd standing in for the uio fd, and responses read back the way the kernel reads
//! them. Behind the handler runs a real gateway process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::ring::initiator::{ConnectOptions, Data, Initiator};
use gateway::ring::shm::SharedMemory;
use gateway::tcmu::abi::{cap, cmd, hdr, mailbox, op, tmr, uflag};
use gateway::tcmu::netlink::{self, DeviceEvent, Incoming, TcmuAttr, TcmuMessage};
use gateway::tcmu::{fixed_nodes, live_grow, live_nodes, Controller, NodeCredential};
use scsi::build::{self, rw16};

mod support;
use support::{on_path, skip_because, Gateway};
#[path = "support/tcmu_model.rs"]
mod model;
use model::*;

const CRED: &str = "tcmu-test-credential-0001";
const NAME: &str = "tcm-user/1/disk0/pangate/p/n/0/0";

fn config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"serial = "pg-tcmu-test"
data_dir = "{}"
[[pan]]
name = "p"
[[pan.image]]
name = "d"
path = "images/d.img"
size = "16MiB"
thin = true
[[pan.node]]
name = "n"
credential = "{CRED}"
luns = [{{ target = 0, lun = 0, image = "d", access = "rw" }}]
"#,
        dir.display()
    );
    let f = dir.join("pangate.toml");
    std::fs::write(&f, text).unwrap();
    f
}

struct Rig {
    _dir: tempfile::TempDir,
    gateway: Gateway,
    uio: ModelUio,
    ctl: Controller<ModelUio>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let gateway = Gateway::start(dir.path(), &cfg);
        let uio = ModelUio::default();
        let nodes =
            vec![NodeCredential { pan: "p".into(), node: "n".into(), credential: CRED.into(), luns: vec![(0, 0)] }];
        let ctl = Controller::new(uio.clone(), gateway.socket.clone(), fixed_nodes(nodes));
        Rig { _dir: dir, gateway, uio, ctl }
    }

    /// A model device at `minor`, announced to the controller in the netlink wire format.
    fn add(&mut self, minor: u32, name: &str, model: &KernelModel) -> i32 {
        self.uio.0.lock().unwrap().insert(minor, (name.into(), model.map.clone(), model.bell.clone()));
        let msg = TcmuMessage {
            cmd: netlink::cmd::ADDED_DEVICE,
            attrs: vec![TcmuAttr::Device(name.into()), TcmuAttr::Minor(minor), TcmuAttr::DeviceId(minor + 100)],
        };
        self.deliver(msg, netlink::cmd::ADDED_DEVICE_DONE, minor + 100)
    }

    /// Sends a kernel message through encode/decode, handles it, and checks the reply's
    /// wire form; returns its status.
    fn deliver(&mut self, msg: TcmuMessage, done: u8, id: u32) -> i32 {
        let wire = netlink::encode(msg, 0x1d, 7);
        let Incoming::Message(m) = netlink::decode(&wire).unwrap().remove(0) else { panic!("not a message") };
        let ev = DeviceEvent::from_message(&m).expect("a device event");
        let status = self.ctl.on_event(&ev);
        let reply = netlink::decode(&netlink::encode(ev.reply(status), 0x1d, 8)).unwrap();
        let Incoming::Message(r) = &reply[0] else { panic!("not a message") };
        assert_eq!(r.cmd, done);
        assert_eq!(r.attrs, vec![TcmuAttr::CmdStatus(status), TcmuAttr::DeviceId(id)]);
        status
    }

    fn remove(&mut self, minor: u32, name: &str) -> i32 {
        let msg = TcmuMessage {
            cmd: netlink::cmd::REMOVED_DEVICE,
            attrs: vec![TcmuAttr::Device(name.into()), TcmuAttr::Minor(minor), TcmuAttr::DeviceId(minor + 100)],
        };
        self.deliver(msg, netlink::cmd::REMOVED_DEVICE_DONE, minor + 100)
    }
}

const ALL_CAPS: u16 = cap::OOOC | cap::READ_LEN | cap::TMR;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

fn cdb10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Clears the handler nexus's power-on unit attention, which passes through to LIO.
fn clear_attention(k: &mut KernelModel) {
    let first = k.run(&[0; 6], None, 0);
    assert_eq!((first.status, first.sense_key()), (2, 0x6), "power-on unit attention first");
    k.run(&[0; 6], None, 0).good();
}

#[test]
fn every_command_family_through_the_ring() {
    let mut rig = Rig::new();
    let mut k = KernelModel::new(64 << 10, 4 << 20, ALL_CAPS);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);

    // INQUIRY with a larger buffer than the data: read_len says how much there was.
    let inq = k.run(&build::inquiry(None, 255), None, 255);
    inq.good();
    assert_eq!(inq.read_len, Some(inq.data.len() as u32));
    assert!(inq.data.len() >= 36 && inq.data.len() < 255, "standard INQUIRY data: {}", inq.data.len());
    assert_eq!(&inq.data[8..15], b"PANGATE");
    let vpd = k.run(&[0x12, 1, 0x83, 0, 255, 0], None, 255);
    assert_eq!(vpd.good().data[1], 0x83);

    let cap16 = k.run(&build::read_capacity_16(), None, 32);
    let last = u64::from_be_bytes(cap16.good().data[0..8].try_into().unwrap());
    assert_eq!(((last + 1) * 512), 16 << 20);
    assert_eq!(k.run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, 8).good().data.len(), 8);

    // WRITE(10) over three iovecs, READ(16) back over two.
    let data = pattern(8 * 512, 3);
    let id = k.queue_split(&cdb10(0x2A, 100, 8), Some(&data), 0, 3);
    k.publish();
    assert_eq!(k.wait(1)[0].good().cmd_id, id);
    let id = k.queue_split(&rw16(0x88, 100, 8, false), None, 8 * 512, 2);
    k.publish();
    let back = k.wait(1).remove(0);
    assert_eq!((back.good().cmd_id, back.read_len), (id, Some(4096)));
    assert!(back.data == data);
    k.run(&rw16(0x8A, 200, 1, true), Some(&pattern(512, 9)), 0).good();
    k.run(&build::synchronize_cache_10(), None, 0).good();

    // VERIFY(16) with BYTCHK=1 compares data-out against the medium.
    let mut verify = rw16(0x8F, 100, 8, false);
    verify[1] = 0x02;
    k.run(&verify, Some(&data), 0).good();
    let miscompare = k.run(&verify, Some(&pattern(4096, 4)), 0);
    assert_eq!((miscompare.status, miscompare.sense_key()), (2, 0xE));

    // COMPARE AND WRITE: verify then write one block.
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&200u64.to_be_bytes());
    caw[13] = 1;
    let mut both = pattern(512, 9);
    both.extend(pattern(512, 10));
    k.run(&caw, Some(&both), 0).good();
    assert!(k.run(&rw16(0x88, 200, 1, false), None, 512).good().data == pattern(512, 10));

    // UNMAP and WRITE SAME (16) with UNMAP read back as zeros.
    let list = build::unmap_one_list(100, 8);
    k.run(&build::UNMAP_ONE, Some(&list), 0).good();
    assert!(k.run(&rw16(0x88, 100, 8, false), None, 4096).good().data.iter().all(|&b| b == 0));
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[1] = 0x08;
    ws[2..10].copy_from_slice(&200u64.to_be_bytes());
    ws[13] = 1;
    k.run(&ws, Some(&[0u8; 512]), 0).good();
    let mut lba_status = [0u8; 16];
    lba_status[0] = 0x9E;
    lba_status[1] = 0x12;
    lba_status[13] = 64;
    k.run(&lba_status, None, 64).good();

    // MODE SENSE, MODE SELECT of the caching page back unchanged, REQUEST SENSE, REPORT
    // LUNS, REPORT SUPPORTED OPERATION CODES, START STOP UNIT.
    let ms = k.run(&[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], None, 255);
    let page = ms.good().data[8..].to_vec();
    let mut sel = vec![0u8; 8];
    sel.extend_from_slice(&page);
    let n = sel.len() as u8;
    k.run(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, n, 0], Some(&sel), 0).good();
    k.run(&[0x03, 0, 0, 0, 252, 0], None, 252).good();
    let luns = k.run(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], None, 256);
    assert_eq!(u32::from_be_bytes(luns.good().data[0..4].try_into().unwrap()), 8, "one LUN");
    k.run(&[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0], None, 4096).good();
    k.run(&[0x1B, 0, 0, 0, 1, 0], None, 0).good();

    // Past the end: ILLEGAL REQUEST from the SCSI target, through the ring.
    let oob = k.run(&rw16(0x88, 1 << 20, 1, false), None, 512);
    assert_eq!((oob.status, oob.sense_key()), (2, 0x5));

    // An opcode pangate does not know: CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND
    // OPERATION CODE in the entry, as tcmu-runner answers, never TCMU_UFLAG_UNKNOWN_OP
    // (which LIO turns into LOGICAL UNIT COMMUNICATION FAILURE); without bothering the gateway.
    let unknown = k.run(&[0x4D, 0, 0, 0, 0, 0, 0, 0, 24, 0], None, 24); // LOG SENSE
    assert!(!unknown.unknown_op && unknown.status == 2);
    assert_eq!((unknown.sense_key(), unknown.sense[12], unknown.sense[13]), (0x5, 0x20, 0x00));
    assert_eq!(rig.ctl.stats(0).unwrap().unknown_op.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn out_of_order_completion_and_wrap_around() {
    let mut rig = Rig::new();
    // A small ring so the run wraps many times, with PAD entries at the end.
    let mut k = KernelModel::new(4096, 8 << 20, ALL_CAPS);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);
    let known = pattern(1 << 20, 77);
    k.run(&rw16(0x8A, 0, 2048, false), Some(&known), 0).good();
    let (mut pads, mut reordered) = (0, 0);
    for round in 0..60u32 {
        // A slow 1 MiB read first, then writes and flushes that finish before it.
        let before = k.head;
        let read = k.queue(&rw16(0x88, 0, 2048, false), None, 1 << 20);
        let mut queued = vec![read];
        for i in 0..4u32 {
            let lba = 4096 + (round * 64 + i * 8) % 20000;
            queued.push(match i % 2 {
                0 => k.queue(&rw16(0x8A, u64::from(lba), 8, false), Some(&pattern(4096, round as u8)), 0),
                _ => k.queue(&build::synchronize_cache_10(), None, 0),
            });
        }
        if k.head < before {
            pads += 1;
        }
        k.publish();
        let got = k.wait(queued.len());
        let order: Vec<u16> = got.iter().map(|c| c.good().cmd_id).collect();
        let read_back = got.iter().find(|c| c.cmd_id == read).expect("the read is answered");
        assert!(read_back.data == known, "round {round}: the read's data is complete when it is answered");
        reordered += usize::from(order != queued);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut want = queued.clone();
        want.sort_unstable();
        assert_eq!(sorted, want, "every command answered exactly once");
    }
    assert!(pads >= 5, "the ring wrapped only {pads} times");
    assert!(reordered > 0, "no round completed out of order; the test proves nothing");
}

#[test]
fn in_order_completion_without_the_ooo_capability() {
    let mut rig = Rig::new();
    let mut k = KernelModel::new(4096, 8 << 20, 0);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);
    for _ in 0..20 {
        // A slow large read first, then quick commands: answers still come in ring order.
        let ids = [
            k.queue(&rw16(0x88, 0, 2048, false), None, 1 << 20),
            k.queue(&[0; 6], None, 0),
            k.queue(&build::synchronize_cache_10(), None, 0),
        ];
        k.publish();
        let got: Vec<u16> = k.wait(3).iter().map(|c| c.good().cmd_id).collect();
        assert_eq!(got, ids);
    }
    // Without READ_LEN the flag is never set.
    let c = k.run(&build::inquiry(None, 255), None, 255);
    assert_eq!(c.good().read_len, None);
}

#[test]
fn task_management_entries_are_passed_over() {
    let mut rig = Rig::new();
    let mut k = KernelModel::new(4096, 4 << 20, ALL_CAPS);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);
    let a = k.queue(&rw16(0x88, 0, 2048, false), None, 1 << 20);
    let b = k.queue(&rw16(0x88, 2048, 2048, false), None, 1 << 20);
    k.queue_tmr(tmr::ABORT_TASK, &[a, b]);
    k.queue_tmr(tmr::LUN_RESET, &[]);
    let c = k.queue(&[0; 6], None, 0);
    k.publish();
    let got: BTreeSet<u16> = k.wait(3).iter().map(|x| x.cmd_id).collect();
    assert_eq!(got, BTreeSet::from([a, b, c]), "aborted commands are still answered; the kernel drops them");
    let stats = rig.ctl.stats(0).unwrap();
    assert_eq!(stats.tmr.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.aborted.load(std::sync::atomic::Ordering::Relaxed), 2);
    // The tail passed over the TMR entries too: the ring is empty.
    assert_eq!(k.tail(), k.head);
}

#[test]
fn malformed_entries_fail_their_command_only() {
    let mut rig = Rig::new();
    let mut k = KernelModel::new(8192, 1 << 20, ALL_CAPS);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);
    let map_len = (k.data_off + k.data_size) as u64;
    let read = rw16(0x88, 0, 1, false);
    let bad: Vec<(&str, u16)> = vec![
        ("iovec inside the command ring", k.write_cmd(&read, &[(CMDR_OFF as u64 + 64, 512)], 0, 0, None)),
        ("iovec past the mapping", k.write_cmd(&read, &[(map_len - 100, 512)], 0, 0, None)),
        ("iovec length overflow", k.write_cmd(&read, &[(k.data_off as u64, u64::MAX)], 0, 0, None)),
        ("iovec count beyond the entry", k.write_cmd(&read, &[], 0, 1000, None)),
        ("bidirectional", k.write_cmd(&read, &[], 1, 0, None)),
        ("CDB outside the mapping", k.write_cmd(&read, &[], 0, 0, Some(map_len + 5))),
    ];
    for (_, id) in &bad {
        k.in_flight.insert(*id, (Vec::new(), 0));
    }
    let ok = k.queue(&[0; 6], None, 0);
    k.publish();
    let got = k.wait(bad.len() + 1);
    for c in &got {
        if c.cmd_id == ok {
            c.good();
            continue;
        }
        let (what, _) = bad.iter().find(|(_, id)| *id == c.cmd_id).unwrap();
        assert_eq!((c.status, c.sense_key()), (2, 0x4), "{what}: HARDWARE ERROR");
    }
    assert_eq!(rig.ctl.stats(0).unwrap().malformed.load(std::sync::atomic::Ordering::Relaxed), bad.len() as u64);
    // The handler still serves the ring afterwards.
    k.run(&rw16(0x8A, 5, 1, false), Some(&pattern(512, 1)), 0).good();

    // An entry whose length makes the rest of the ring unreadable stops this device only.
    let at = k.reserve(8);
    k.map.write(CMDR_OFF as u64 + u64::from(at), &(4u32 << 20 | op::CMD).to_le_bytes()).unwrap();
    k.publish();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.ctl.running(0) {
        assert!(Instant::now() < deadline, "the device kept going over a broken ring");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut other = KernelModel::new(4096, 1 << 20, ALL_CAPS);
    assert_eq!(rig.add(1, "tcm-user/1/disk1/pangate/p/n/0/0", &other), 0);
    clear_attention(&mut other);
    other.run(&rw16(0x88, 5, 1, false), None, 512).good();
    assert_eq!(rig.remove(0, NAME), 0);
}

#[test]
fn netlink_add_reconfigure_and_remove() {
    let mut rig = Rig::new();
    let k = KernelModel::new(4096, 1 << 20, ALL_CAPS);
    // Config strings that name no pangate LUN are refused with a status.
    assert_eq!(rig.add(3, "tcm-user/1/x/file//tmp/img", &k), -libc::EINVAL);
    assert_eq!(rig.add(3, "tcm-user/1/x/pangate/p/nobody/0/0", &k), -libc::ENOENT);
    assert_eq!(rig.add(3, "tcm-user/1/x/pangate/p/n/0/9", &k), -libc::ENOENT, "a LUN the node does not map");
    assert!(rig.ctl.served().is_empty());
    let mut k = KernelModel::new(4096, 1 << 20, ALL_CAPS);
    assert_eq!(rig.add(3, NAME, &k), 0);
    assert_eq!(rig.ctl.served().len(), 1);
    clear_attention(&mut k);

    let reconfig = |attrs: Vec<TcmuAttr>| TcmuMessage {
        cmd: netlink::cmd::RECONFIG_DEVICE,
        attrs: [vec![TcmuAttr::Device(NAME.into()), TcmuAttr::Minor(3), TcmuAttr::DeviceId(103)], attrs].concat(),
    };
    let done = netlink::cmd::RECONFIG_DEVICE_DONE;
    // Write cache off, then on: MODE SENSE sees WCE follow.
    let wce = |k: &mut KernelModel| {
        let ms = k.run(&[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], None, 255);
        ms.good().data[8 + 2] & 0x04 != 0
    };
    assert!(wce(&mut k));
    assert_eq!(rig.deliver(reconfig(vec![TcmuAttr::WriteCache(0)]), done, 103), 0);
    // The mode change raised MODE PARAMETERS CHANGED for the nexus; LIO's initiator sees it.
    let ua = k.run(&[0; 6], None, 0);
    assert!(ua.status == 0 || ua.sense_key() == 0x6);
    assert!(!wce(&mut k));
    assert_eq!(rig.deliver(reconfig(vec![TcmuAttr::WriteCache(1)]), done, 103), 0);
    let _ = k.run(&[0; 6], None, 0);
    assert!(wce(&mut k));
    // The size must be the LUN's; moving the device to another LUN is refused.
    assert_eq!(rig.deliver(reconfig(vec![TcmuAttr::DevSize(16 << 20)]), done, 103), 0);
    // This controller was given no way to resize (an in-process gateway grows LUNs; see
    // `reconfiguring_the_size_grows_the_lun`).
    assert_eq!(rig.deliver(reconfig(vec![TcmuAttr::DevSize(32 << 20)]), done, 103), -libc::EOPNOTSUPP);
    assert_eq!(rig.deliver(reconfig(vec![TcmuAttr::DevCfg("pangate/p/n/0/1".into())]), done, 103), -libc::EINVAL);

    assert_eq!(rig.remove(3, NAME), 0);
    assert!(rig.ctl.served().is_empty());
    // Removing again (or something never served) still answers.
    assert_eq!(rig.remove(3, NAME), 0);
}

#[test]
fn the_same_lun_over_tcmu_and_the_rings() {
    let mut rig = Rig::new();
    let mut k = KernelModel::new(16 << 10, 4 << 20, ALL_CAPS);
    assert_eq!(rig.add(0, NAME, &k), 0);
    clear_attention(&mut k);
    let opts = ring_node();
    let mut node = Initiator::connect(&rig.gateway.socket, &opts).unwrap();
    node.execute(0, 0, &[0; 6], Data::None).unwrap();
    for round in 0..20u8 {
        let lba = u64::from(round) * 8;
        let via_tcmu = pattern(4096, round);
        k.run(&rw16(0x8A, lba, 8, false), Some(&via_tcmu), 0).good();
        let (r, seen) = node.read(0, 0, lba, 4096).unwrap();
        assert!(r.good() && seen == via_tcmu, "round {round}: the ring node sees the TCMU write");
        let via_ring = pattern(4096, round.wrapping_add(100));
        assert!(node.write(0, 0, lba, &via_ring, false, false).unwrap().good());
        assert!(k.run(&rw16(0x88, lba, 8, false), None, 4096).good().data == via_ring);
    }
}

#[test]
fn abi_offsets_match_the_installed_kernel_header() {
    let header = Path::new("/usr/include/linux/target_core_user.h");
    if skip_because(
        (!header.exists() || !on_path("cc")).then(|| "needs cc and linux/target_core_user.h (linux-libc-dev)".into()),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("off.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include <linux/target_core_user.h>
#define P(x) printf("%zu\n", (size_t)(x))
int main(void) {
  P(sizeof(struct tcmu_mailbox)); P(offsetof(struct tcmu_mailbox, version));
  P(offsetof(struct tcmu_mailbox, flags)); P(offsetof(struct tcmu_mailbox, cmdr_off));
  P(offsetof(struct tcmu_mailbox, cmdr_size)); P(offsetof(struct tcmu_mailbox, cmd_head));
  P(offsetof(struct tcmu_mailbox, cmd_tail));
  P(sizeof(struct tcmu_cmd_entry_hdr)); P(offsetof(struct tcmu_cmd_entry_hdr, cmd_id));
  P(offsetof(struct tcmu_cmd_entry_hdr, kflags)); P(offsetof(struct tcmu_cmd_entry_hdr, uflags));
  P(sizeof(struct tcmu_cmd_entry)); P(offsetof(struct tcmu_cmd_entry, req.iov_cnt));
  P(offsetof(struct tcmu_cmd_entry, req.iov_bidi_cnt)); P(offsetof(struct tcmu_cmd_entry, req.iov_dif_cnt));
  P(offsetof(struct tcmu_cmd_entry, req.cdb_off)); P(offsetof(struct tcmu_cmd_entry, req.iov));
  P(offsetof(struct tcmu_cmd_entry, rsp.scsi_status)); P(offsetof(struct tcmu_cmd_entry, rsp.read_len));
  P(offsetof(struct tcmu_cmd_entry, rsp.sense_buffer)); P(TCMU_SENSE_BUFFERSIZE);
  P(sizeof(struct tcmu_tmr_entry)); P(offsetof(struct tcmu_tmr_entry, tmr_type));
  P(offsetof(struct tcmu_tmr_entry, cmd_cnt)); P(offsetof(struct tcmu_tmr_entry, cmd_ids));
  P(TCMU_MAILBOX_FLAG_CAP_OOOC); P(TCMU_MAILBOX_FLAG_CAP_READ_LEN); P(TCMU_MAILBOX_FLAG_CAP_TMR);
  P(TCMU_UFLAG_UNKNOWN_OP); P(TCMU_UFLAG_READ_LEN); P(TCMU_OP_PAD); P(TCMU_OP_CMD); P(TCMU_OP_TMR);
  P(TCMU_TMR_ABORT_TASK); P(TCMU_TMR_LUN_RESET); P(TCMU_MAILBOX_VERSION);
  return 0;
}
"#,
    )
    .unwrap();
    let bin = dir.path().join("off");
    let built = std::process::Command::new("cc").arg(&src).arg("-o").arg(&bin).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let out = std::process::Command::new(&bin).output().unwrap();
    let got: Vec<usize> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let want = vec![
        mailbox::SIZE,
        mailbox::VERSION,
        mailbox::FLAGS,
        mailbox::CMDR_OFF,
        mailbox::CMDR_SIZE,
        mailbox::CMD_HEAD,
        mailbox::CMD_TAIL,
        hdr::SIZE,
        hdr::CMD_ID,
        hdr::KFLAGS,
        hdr::UFLAGS,
        cmd::SIZE,
        cmd::IOV_CNT,
        cmd::IOV_BIDI_CNT,
        cmd::IOV_DIF_CNT,
        cmd::CDB_OFF,
        cmd::IOV,
        cmd::STATUS,
        cmd::READ_LEN,
        cmd::SENSE,
        cmd::SENSE_SIZE,
        tmr::SIZE,
        tmr::TYPE,
        tmr::CMD_CNT,
        tmr::CMD_IDS,
        cap::OOOC as usize,
        cap::READ_LEN as usize,
        cap::TMR as usize,
        uflag::UNKNOWN_OP as usize,
        uflag::READ_LEN as usize,
        op::PAD as usize,
        op::CMD as usize,
        op::TMR as usize,
        tmr::ABORT_TASK as usize,
        tmr::LUN_RESET as usize,
        gateway::tcmu::abi::MAILBOX_VERSION as usize,
    ];
    assert_eq!(got, want);
}

/// A bounded fuzz run in the suite (the open-ended one is `cargo fuzz run tcmu_ring` and
/// `tcmu_netlink` under `fuzz/`): rings of random entries, mostly well-formed headers with
/// random bodies, and random netlink datagrams.
#[test]
fn bounded_fuzz_of_the_ring_and_netlink_parsers() {
    use gateway::tcmu::ring::{CommandRing, Entry, Response};
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const RING: usize = 2048;
    const FUZZ_ROUNDS: usize = 3000;
    let len = CMDR_OFF + RING + 8192;
    for _ in 0..FUZZ_ROUNDS {
        let map = Arc::new(SharedMemory::create("fuzz", len).unwrap());
        map.write(0, &2u16.to_le_bytes()).unwrap();
        map.write(2, &((next() & 7) as u16).to_le_bytes()).unwrap();
        map.write(4, &(CMDR_OFF as u32).to_le_bytes()).unwrap();
        map.write(8, &(RING as u32).to_le_bytes()).unwrap();
        // Entries with plausible headers (length, opcode) and random bodies.
        let mut at = 0usize;
        while at + 8 <= RING && next() % 8 != 0 {
            let size = ((next() as usize % 256) + 8) & !7;
            let body: Vec<u8> = (0..size.min(RING - at)).map(|_| next() as u8).collect();
            map.write((CMDR_OFF + at) as u64, &body).unwrap();
            let len_op = size as u32 | (next() % 4) as u32;
            map.write((CMDR_OFF + at) as u64, &len_op.to_le_bytes()).unwrap();
            at += size;
        }
        map.store_release(mailbox::CMD_HEAD, (at.min(RING - 8) & !7) as u32).unwrap();
        let Ok(mut ring) = CommandRing::attach(map.clone()) else { continue };
        let mut entries = Vec::new();
        let _ = ring.fetch(&mut entries);
        for e in entries {
            let id = match e {
                Entry::Cmd(c) => {
                    assert!(c
                        .iovs
                        .iter()
                        .all(|i| i.offset >= (CMDR_OFF + RING) as u64 && i.offset + i.len <= len as u64));
                    c.cmd_id
                }
                Entry::Malformed { cmd_id, .. } => cmd_id,
                Entry::Tmr { .. } => continue,
            };
            ring.complete(Response { cmd_id: id, status: 0, sense: vec![], read_len: Some(1) }).unwrap();
        }
        ring.publish().unwrap();
    }
    for _ in 0..FUZZ_ROUNDS {
        let n = next() as usize % 200;
        let mut d: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        if n >= 4 && next() % 2 == 0 {
            d[0..4].copy_from_slice(&(n as u32).to_ne_bytes());
        }
        if let Ok(msgs) = netlink::decode(&d) {
            for m in msgs {
                // Attributes pangate knows round-trip exactly; unknown ones are only read.
                if let Incoming::Message(m) = m {
                    if m.attrs.iter().any(|a| matches!(a, TcmuAttr::Other(_))) {
                        continue;
                    }
                    let again = netlink::decode(&netlink::encode(m.clone(), 30, 1)).unwrap();
                    assert_eq!(again, vec![Incoming::Message(m)]);
                }
            }
        }
    }
}

/// A private bus daemon, killed on drop.
struct Bus(std::process::Child);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dbus_send(addr: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("dbus-send")
        .arg(format!("--bus={addr}"))
        .args(["--print-reply", "--dest=org.kernel.TCMUService1"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "dbus-send {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// targetcli lists `user:<handler>` backstores from the `org.kernel.TCMUService1` object
/// manager and calls the handler's CheckConfig before creating one; dbus-send plays
/// targetcli here, against a private bus.
#[test]
fn targetcli_finds_the_handler_on_dbus() {
    use gateway::tcmu::{check_config, dbus};
    let tools = on_path("dbus-daemon") && on_path("dbus-send");
    if skip_because((!tools).then(|| "needs dbus-daemon and dbus-send (Debian dbus-daemon, dbus-bin)".into())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus");
    let addr = format!("unix:path={}", path.display());
    let mut bus = Bus(std::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address", &format!("--address={addr}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    // The socket file appears at bind(), before the daemon listens; the printed address
    // comes only once it accepts connections.
    let mut printed = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(bus.0.stdout.take().unwrap()), &mut printed).unwrap();
    assert!(printed.contains(&*path.to_string_lossy()), "the bus daemon did not start: {printed:?}");
    let nodes = vec![NodeCredential { pan: "p".into(), node: "n".into(), credential: CRED.into(), luns: vec![(0, 0)] }];
    let check: dbus::ConfigCheck = Arc::new(move |c: &str| check_config(&nodes, c).map(drop));
    let _reg = dbus::register(Some(&addr), check).unwrap();

    let objects = dbus_send(&addr, &[dbus::ROOT, "org.freedesktop.DBus.ObjectManager.GetManagedObjects"]);
    assert!(objects.contains(dbus::HANDLER) && objects.contains("ConfigDesc"), "{objects}");
    let check =
        |cfg: &str| dbus_send(&addr, &[dbus::HANDLER, "org.kernel.TCMUService1.CheckConfig", &format!("string:{cfg}")]);
    let ok = check("pangate/p/n/0/0");
    assert!(ok.contains("boolean true"), "{ok}");
    let bad = check("pangate/p/n/0/7");
    assert!(bad.contains("boolean false") && bad.contains("maps no target 0 LUN 7"), "{bad}");
    let bad = check("pangate/p/x/0/0");
    assert!(bad.contains("boolean false") && bad.contains("no node"), "{bad}");
}

#[test]
fn reconfiguring_the_size_grows_the_lun() {
    use gateway::config::Config;
    use gateway::ring::server::{Server, ServerOptions};
    use gateway::storage;

    let dir = tempfile::tempdir().unwrap();
    let cfg_file = config(dir.path());
    let cfg = Config::load(&cfg_file).unwrap();
    let (images, maps) = storage::open_all(&cfg, dir.path()).unwrap();
    let socket = dir.path().join("in-process.sock");
    let registry = gateway::registry::Registry::from_config(&cfg, &maps);
    let server = Server::start(images, registry.clone(), ServerOptions::new(&socket)).unwrap();
    let uio = ModelUio::default();
    let mut ctl = Controller::new(uio.clone(), socket.clone(), live_nodes(registry.clone()))
        .with_grow(live_grow(registry, server.images()));
    let mut k = KernelModel::new(4096, 1 << 20, ALL_CAPS);
    uio.0.lock().unwrap().insert(0, (NAME.into(), k.map.clone(), k.bell.clone()));
    assert_eq!(ctl.on_event(&DeviceEvent::Added { name: NAME.into(), minor: 0, id: None }), 0);
    clear_attention(&mut k);

    let reconfig = |size| DeviceEvent::Reconfig {
        name: NAME.into(),
        minor: 0,
        id: None,
        config: None,
        size: Some(size),
        write_cache: None,
    };
    assert_eq!(ctl.on_event(&reconfig(64 << 20)), 0);
    // The initiator hears of it, then sees the new capacity; the image file grew.
    let rc16 = build::read_capacity_16();
    let ua = k.run(&rc16, None, 32);
    assert_eq!((ua.status, ua.sense_key(), ua.sense[12], ua.sense[13]), (2, 0x6, 0x2A, 0x09));
    let cap = k.run(&rc16, None, 32);
    assert_eq!(u64::from_be_bytes(cap.good().data[0..8].try_into().unwrap()) + 1, (64 << 20) / 512);
    assert_eq!(std::fs::metadata(dir.path().join("images/d.img")).unwrap().len(), 64 << 20);
    k.run(&rw16(0x8A, (60 << 20) / 512, 8, false), Some(&pattern(4096, 5)), 0).good();
    // Nodes connecting now are told the new size.
    let opts = ring_node();
    let node = Initiator::connect(&socket, &opts).unwrap();
    assert_eq!(node.luns()[0].blocks, (64 << 20) / 512);
    // Shrinking, or sizes that are not whole blocks, are refused.
    assert_eq!(ctl.on_event(&reconfig(32 << 20)), -libc::EINVAL);
    assert_eq!(ctl.on_event(&reconfig((64 << 20) + 100)), -libc::EINVAL);
    drop(node);
    assert_eq!(ctl.on_event(&DeviceEvent::Removed { name: NAME.into(), minor: 0, id: None }), 0);
    server.shutdown().unwrap();
}

#[test]
fn nodes_added_at_run_time_are_served_and_removed_ones_are_not() {
    use gateway::config::{Access, Config};
    use gateway::registry::{NodeEntry, Registry};
    use gateway::ring::server::{Server, ServerOptions};
    use gateway::storage;

    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(&config(dir.path())).unwrap();
    let (images, maps) = storage::open_all(&cfg, dir.path()).unwrap();
    let socket = dir.path().join("in-process.sock");
    let registry = Registry::from_config(&cfg, &maps);
    let server = Server::start(images, registry.clone(), ServerOptions::new(&socket)).unwrap();
    let uio = ModelUio::default();
    let mut ctl = Controller::new(uio.clone(), socket.clone(), live_nodes(registry.clone()));
    let name = "tcm-user/1/late/pangate/p/late/2/5";
    let mut k = KernelModel::new(4096, 1 << 20, ALL_CAPS);
    uio.0.lock().unwrap().insert(3, (name.into(), k.map.clone(), k.bell.clone()));
    let added =
        |ctl: &mut Controller<ModelUio>| ctl.on_event(&DeviceEvent::Added { name: name.into(), minor: 3, id: None });
    assert_eq!(added(&mut ctl), -libc::ENOENT, "an unknown node is refused");

    let late = NodeEntry {
        pan: "p".into(),
        node: "late".into(),
        credential: "a-node-added-while-running".into(),
        uid: None,
        luns: vec![(2, 5, 0, Access::Rw)],
        iscsi: None,
    };
    registry.set(late).unwrap();
    assert_eq!(added(&mut ctl), 0, "the node the admin just added is served");
    clear_attention(&mut k);
    k.run(&rw16(0x8A, 8, 8, false), Some(&pattern(4096, 9)), 0).good();
    assert_eq!(k.run(&rw16(0x88, 8, 8, false), None, 4096).good().data, pattern(4096, 9));
    assert_eq!(ctl.on_event(&DeviceEvent::Removed { name: name.into(), minor: 3, id: None }), 0);

    registry.remove("p", "late").unwrap();
    assert_eq!(added(&mut ctl), -libc::ENOENT, "a removed node is no longer served");
    server.shutdown().unwrap();
}

/// Node n of PAN p as a ring node (beside its TCMU backstore).
fn ring_node() -> ConnectOptions {
    ConnectOptions {
        pan: "p".into(),
        node: "n".into(),
        credential: CRED.into(),
        slots: 256,
        data_bytes: 1 << 20,
        client: None,
    }
}
