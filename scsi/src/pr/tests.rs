use super::*;
use crate::sense::SenseKey;

fn port(n: u8) -> InitiatorPort {
    InitiatorPort::new(&format!("iqn.2026-12.test:i{n}"), 0x23d0_0000_0000 | u64::from(n))
}

/// A REGISTER-style parameter list: key, service action key, flags byte 20.
fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

struct Lu {
    pr: Persistent,
    ports: Vec<InitiatorPort>,
}

impl Lu {
    fn new(n: u8) -> Lu {
        Lu { pr: Persistent::default(), ports: (0..n).map(port).collect() }
    }

    fn out(&mut self, who: usize, action: u8, scope_type: u8, p: &[u8]) -> Result<Effects, PrError> {
        let n = ItNexus { port: &self.ports[who], target_port: 1 };
        self.pr.out(&n, action, scope_type, p)
    }

    fn register(&mut self, who: usize, key: u64) {
        self.out(who, sa_out::REGISTER, 0, &params(0, key, 0)).unwrap();
    }

    fn nexus(&self, who: usize) -> ItNexus<'_> {
        ItNexus { port: &self.ports[who], target_port: 1 }
    }
}

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_AR: u8 = 8;

#[test]
fn read_keys_and_read_reservation_bytes() {
    let mut lu = Lu::new(2);
    assert_eq!(lu.pr.read(sa_in::READ_KEYS).unwrap(), [0, 0, 0, 0, 0, 0, 0, 0]);
    lu.register(0, 0xAA);
    lu.register(1, 0xBB);
    assert_eq!(
        lu.pr.read(sa_in::READ_KEYS).unwrap(),
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xAA, 0, 0, 0, 0, 0, 0, 0, 0xBB]
    );
    assert_eq!(lu.pr.read(sa_in::READ_RESERVATION).unwrap(), [0, 0, 0, 2, 0, 0, 0, 0]);
    lu.out(1, sa_out::RESERVE, WE, &params(0xBB, 0, 0)).unwrap();
    assert_eq!(
        lu.pr.read(sa_in::READ_RESERVATION).unwrap(),
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xBB, 0, 0, 0, 0, 0, WE, 0, 0],
        "RESERVE does not change the generation"
    );
}

#[test]
fn report_capabilities_bytes() {
    let lu = Lu::new(1);
    assert_eq!(lu.pr.read(sa_in::REPORT_CAPABILITIES).unwrap(), [0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0]);
}

#[test]
fn read_full_status_describes_each_registration_with_its_transport_id() {
    let mut lu = Lu::new(2);
    lu.register(0, 0x11);
    lu.out(1, sa_out::REGISTER, 0, &params(0, 0x22, 0x04)).unwrap(); // ALL_TG_PT
    lu.out(0, sa_out::RESERVE, EA, &params(0x11, 0, 0)).unwrap();
    let b = lu.pr.read(sa_in::READ_FULL_STATUS).unwrap();
    assert_eq!(&b[0..4], &[0, 0, 0, 2]);
    let tid0 = port(0).transport_id();
    let d0 = &b[8..];
    assert_eq!(&d0[0..8], &0x11u64.to_be_bytes());
    assert_eq!((d0[12], d0[13]), (0x01, EA), "R_HOLDER and the type");
    assert_eq!(&d0[18..20], &[0, 1], "relative target port");
    assert_eq!(&d0[20..24], &(tid0.len() as u32).to_be_bytes());
    assert_eq!(&d0[24..24 + tid0.len()], &tid0[..]);
    let d1 = &d0[24 + tid0.len()..];
    assert_eq!((d1[12], d1[13]), (0x02, 0), "ALL_TG_PT, not a holder");
    assert_eq!(u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize, b.len() - 8);
}

#[test]
fn transport_ids_round_trip_and_pad_to_four() {
    let p = port(7);
    let t = p.transport_id();
    assert_eq!(t[0], 0x45);
    assert_eq!(t.len() % 4, 0);
    assert!(t.windows(5).any(|w| w == b",i,0x"));
    assert_eq!(InitiatorPort::parse_transport_id(&t), Some((p, t.len())));
    let whole = InitiatorPort { name: "iqn.2026-12.test:x".into(), isid: None };
    let t = whole.transport_id();
    assert_eq!(t[0], 0x05);
    assert!(t.len() >= 24);
    assert_eq!(InitiatorPort::parse_transport_id(&t), Some((whole, t.len())));
    // Fibre Channel (protocol 0) names no pangate initiator.
    assert_eq!(InitiatorPort::parse_transport_id(&[0, 0, 0, 20, 1, 2, 3, 4]), None);
}

#[test]
fn register_rules() {
    let mut lu = Lu::new(2);
    // Unregistered with a non-zero reservation key: conflict.
    assert_eq!(lu.out(0, sa_out::REGISTER, 0, &params(5, 6, 0)), Err(PrError::Conflict));
    // Key 0 while unregistered: nothing happens, generation unchanged.
    lu.out(0, sa_out::REGISTER, 0, &params(0, 0, 0)).unwrap();
    assert_eq!((lu.pr.generation, lu.pr.registrations.len()), (0, 0));
    lu.register(0, 6);
    assert_eq!(lu.pr.generation, 1);
    // The wrong current key: conflict; the right one changes it.
    assert_eq!(lu.out(0, sa_out::REGISTER, 0, &params(7, 8, 0)), Err(PrError::Conflict));
    lu.out(0, sa_out::REGISTER, 0, &params(6, 8, 0)).unwrap();
    assert_eq!(lu.pr.registrations[0].key, 8);
    // REGISTER AND IGNORE EXISTING KEY ignores it.
    lu.out(0, sa_out::REGISTER_AND_IGNORE, 0, &params(999, 9, 0)).unwrap();
    assert_eq!(lu.pr.registrations[0].key, 9);
    // Unregister.
    lu.out(0, sa_out::REGISTER, 0, &params(9, 0, 0)).unwrap();
    assert!(lu.pr.registrations.is_empty());
    assert_eq!(lu.pr.generation, 4);
    // A parameter list of the wrong length, or a reserved flag.
    let mut long = params(0, 1, 0);
    long.push(0);
    assert_eq!(lu.out(1, sa_out::REGISTER, 0, &long), Err(PrError::Check(Sense::parameter_list_length())));
    assert_eq!(lu.out(1, sa_out::REGISTER, 0, &params(0, 1, 0x02)), Err(Sense::invalid_parameter(20, None).into()));
}

#[test]
fn spec_i_pt_registers_the_named_ports_too() {
    let mut lu = Lu::new(3);
    let mut p = params(0, 0x77, 0x08);
    let (t1, t2) = (port(1).transport_id(), port(2).transport_id());
    p.extend_from_slice(&((t1.len() + t2.len()) as u32).to_be_bytes());
    p.extend(&t1);
    p.extend(&t2);
    lu.out(0, sa_out::REGISTER, 0, &p).unwrap();
    assert_eq!(lu.pr.registrations.len(), 3);
    assert!(lu.pr.registered(&lu.nexus(2)));
    // Naming an already registered port is refused, and registers nobody.
    let mut lu2 = Lu::new(3);
    lu2.register(1, 5);
    let mut p = params(0, 0x77, 0x08);
    p.extend_from_slice(&(t1.len() as u32).to_be_bytes());
    p.extend(&t1);
    assert_eq!(lu2.out(0, sa_out::REGISTER, 0, &p), Err(Sense::invalid_parameter(24, None).into()));
    assert_eq!(lu2.pr.registrations.len(), 1);
    // SPEC_I_PT with REGISTER AND IGNORE EXISTING KEY is refused.
    assert!(matches!(lu2.out(2, sa_out::REGISTER_AND_IGNORE, 0, &params(0, 1, 0x08)), Err(PrError::Check(_))));
}

#[test]
fn reserve_and_release_rules() {
    let mut lu = Lu::new(3);
    assert_eq!(lu.out(0, sa_out::RESERVE, WE, &params(0, 0, 0)), Err(PrError::Conflict), "unregistered");
    lu.register(0, 1);
    lu.register(1, 2);
    assert_eq!(lu.out(0, sa_out::RESERVE, WE, &params(2, 0, 0)), Err(PrError::Conflict), "wrong key");
    assert_eq!(lu.out(0, sa_out::RESERVE, 2, &params(1, 0, 0)), Err(Sense::invalid_cdb_field(2, Some(3)).into()));
    assert_eq!(
        lu.out(0, sa_out::RESERVE, 0x10 | WE, &params(1, 0, 0)),
        Err(Sense::invalid_cdb_field(2, Some(7)).into())
    );
    lu.out(0, sa_out::RESERVE, WE, &params(1, 0, 0)).unwrap();
    lu.out(0, sa_out::RESERVE, WE, &params(1, 0, 0)).expect("the holder may reserve again");
    assert_eq!(lu.out(0, sa_out::RESERVE, EA, &params(1, 0, 0)), Err(PrError::Conflict), "another type");
    assert_eq!(lu.out(1, sa_out::RESERVE, WE, &params(2, 0, 0)), Err(PrError::Conflict), "another holder");
    // A non-holder's release does nothing; the holder's with the wrong type is refused.
    lu.out(1, sa_out::RELEASE, WE, &params(2, 0, 0)).unwrap();
    assert_eq!(lu.pr.reservation, Some(PrType::WriteExclusive));
    let e = lu.out(0, sa_out::RELEASE, EA, &params(1, 0, 0)).unwrap_err();
    assert_eq!(e, PrError::Check(Sense::new(SenseKey::IllegalRequest, Asc::INVALID_RELEASE_OF_PR)));
    let fx = lu.out(0, sa_out::RELEASE, WE, &params(1, 0, 0)).unwrap();
    assert_eq!(lu.pr.reservation, None);
    assert!(fx.attentions.is_empty(), "releasing Write Exclusive tells nobody");
    // Releasing a registrants-only reservation tells the other registrants.
    lu.out(0, sa_out::RESERVE, WE_RO, &params(1, 0, 0)).unwrap();
    let fx = lu.out(0, sa_out::RELEASE, WE_RO, &params(1, 0, 0)).unwrap();
    assert_eq!(fx.attentions.len(), 1);
    assert_eq!(fx.attentions[0].1, Asc::RESERVATIONS_RELEASED);
    assert!(fx.attentions[0].0.covers(&lu.nexus(1)));
}

#[test]
fn unregistering_the_holder_releases_the_reservation() {
    let mut lu = Lu::new(2);
    lu.register(0, 1);
    lu.register(1, 2);
    lu.out(0, sa_out::RESERVE, EA, &params(1, 0, 0)).unwrap();
    lu.out(0, sa_out::REGISTER, 0, &params(1, 0, 0)).unwrap();
    assert_eq!(lu.pr.reservation, None);
    // All registrants: released only with the last registrant.
    lu.out(1, sa_out::RESERVE, EA_AR, &params(2, 0, 0)).unwrap();
    lu.register(0, 3);
    assert!(lu.pr.holds(&lu.nexus(0)), "a new registrant holds an all-registrants reservation");
    lu.out(1, sa_out::REGISTER, 0, &params(2, 0, 0)).unwrap();
    assert_eq!(lu.pr.reservation, Some(PrType::ExclusiveAccessAllRegistrants));
    lu.out(0, sa_out::REGISTER, 0, &params(3, 0, 0)).unwrap();
    assert_eq!(lu.pr.reservation, None);
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let mut lu = Lu::new(3);
    for i in 0..3 {
        lu.register(i, 10 + i as u64);
    }
    lu.out(1, sa_out::RESERVE, WE, &params(11, 0, 0)).unwrap();
    assert_eq!(lu.out(2, sa_out::CLEAR, 0, &params(99, 0, 0)), Err(PrError::Conflict));
    let fx = lu.out(2, sa_out::CLEAR, 0, &params(12, 0, 0)).unwrap();
    assert!(lu.pr.registrations.is_empty() && lu.pr.reservation.is_none());
    let told: Vec<bool> = (0..3).map(|i| fx.attentions.iter().any(|(to, _)| to.covers(&lu.nexus(i)))).collect();
    assert_eq!(told, [true, true, false]);
    assert!(fx.attentions.iter().all(|(_, a)| *a == Asc::RESERVATIONS_PREEMPTED));
}

#[test]
fn preempt_takes_the_reservation_and_removes_the_holder() {
    let mut lu = Lu::new(3);
    lu.register(0, 1);
    lu.register(1, 2);
    lu.register(2, 3);
    lu.out(0, sa_out::RESERVE, WE, &params(1, 0, 0)).unwrap();
    let fx = lu.out(1, sa_out::PREEMPT_AND_ABORT, EA, &params(2, 1, 0)).unwrap();
    assert!(!lu.pr.registered(&lu.nexus(0)));
    assert!(lu.pr.holds(&lu.nexus(1)));
    assert_eq!(lu.pr.reservation, Some(PrType::ExclusiveAccess));
    assert!(fx.attentions.iter().any(|(to, a)| to.covers(&lu.nexus(0)) && *a == Asc::REGISTRATIONS_PREEMPTED));
    assert!(fx.attentions.iter().any(|(to, a)| to.covers(&lu.nexus(2)) && *a == Asc::RESERVATIONS_RELEASED));
    assert_eq!(fx.aborted.len(), 1);
    // A key nobody has: conflict. Key 0 against a single holder: invalid.
    assert_eq!(lu.out(1, sa_out::PREEMPT, EA, &params(2, 77, 0)), Err(PrError::Conflict));
    assert_eq!(lu.out(1, sa_out::PREEMPT, EA, &params(2, 0, 0)), Err(Sense::invalid_parameter(8, None).into()));
    // Preempting a non-holder's key removes only its registration.
    let before = lu.pr.generation;
    lu.out(1, sa_out::PREEMPT, EA, &params(2, 3, 0)).unwrap();
    assert!(!lu.pr.registered(&lu.nexus(2)));
    assert_eq!(lu.pr.reservation, Some(PrType::ExclusiveAccess));
    assert_eq!(lu.pr.generation, before + 1);
}

#[test]
fn preempt_of_an_all_registrants_reservation_with_key_zero_takes_it_alone() {
    let mut lu = Lu::new(3);
    for i in 0..3 {
        lu.register(i, 5);
    }
    lu.out(0, sa_out::RESERVE, EA_AR, &params(5, 0, 0)).unwrap();
    lu.out(2, sa_out::PREEMPT, WE, &params(5, 0, 0)).unwrap();
    assert_eq!(lu.pr.registrations.len(), 1);
    assert!(lu.pr.holds(&lu.nexus(2)));
    assert_eq!(lu.pr.reservation, Some(PrType::WriteExclusive));
}

#[test]
fn register_and_move_hands_the_reservation_to_another_port() {
    let mut lu = Lu::new(2);
    lu.register(0, 1);
    lu.out(0, sa_out::RESERVE, WE, &params(1, 0, 0)).unwrap();
    let t = port(1).transport_id();
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&1u64.to_be_bytes());
    p[8..16].copy_from_slice(&9u64.to_be_bytes());
    p[17] = 0x02; // UNREG
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend(&t);
    lu.out(0, sa_out::REGISTER_AND_MOVE, WE, &p).unwrap();
    assert!(lu.pr.holds(&lu.nexus(1)));
    assert!(!lu.pr.registered(&lu.nexus(0)));
    assert_eq!(lu.pr.registrations[0].key, 9);
}

#[test]
fn access_under_each_type() {
    use Access::*;
    // For each type: (holder, registrant, stranger) × (read, write) allowed.
    let table: [(u8, [[bool; 2]; 3]); 6] = [
        (1, [[true, true], [true, false], [true, false]]),
        (3, [[true, true], [false, false], [false, false]]),
        (5, [[true, true], [true, true], [true, false]]),
        (6, [[true, true], [true, true], [false, false]]),
        (7, [[true, true], [true, true], [true, false]]),
        (8, [[true, true], [true, true], [false, false]]),
    ];
    for (code, want) in table {
        let mut lu = Lu::new(3);
        lu.register(0, 1);
        lu.register(1, 2);
        lu.out(0, sa_out::RESERVE, code, &params(1, 0, 0)).unwrap();
        for (who, [read, write]) in want.iter().enumerate() {
            let n = lu.nexus(who);
            assert_eq!(!lu.pr.conflicts(&n, Read), *read, "type {code}, nexus {who}, read");
            assert_eq!(!lu.pr.conflicts(&n, Write), *write, "type {code}, nexus {who}, write");
            assert!(!lu.pr.conflicts(&n, Any));
        }
    }
}

mod model {
    //! Random service actions from four initiators, checked against the invariants SPC-4
    //! keeps whatever the order.
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = (usize, u8, u8, u64, u64, u8)> {
        (0..4usize, 0..8u8, prop::sample::select(vec![1u8, 3, 5, 6, 7, 8, 2]), 0..4u64, 0..4u64, 0..2u8)
    }

    proptest! {
        #[test]
        fn invariants_hold(ops in prop::collection::vec(op(), 1..60)) {
            let mut lu = Lu::new(4);
            for (who, action, kind, key, sa_key, all_tg_pt) in ops {
                let before = lu.pr.clone();
                let mut p = params(key, sa_key, all_tg_pt << 2);
                if action == sa_out::REGISTER_AND_MOVE {
                    let t = port(((who + 1) % 4) as u8).transport_id();
                    p[20] = 0;
                    p[18..20].copy_from_slice(&1u16.to_be_bytes());
                    p[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
                    p.extend(&t);
                }
                let r = lu.out(who, action, kind, &p);
                let pr = &lu.pr;
                let holders = pr.registrations.iter().filter(|r| r.holder).count();
                match pr.reservation {
                    None => prop_assert_eq!(holders, 0),
                    Some(k) if k.all_registrants() => prop_assert_eq!(holders, pr.registrations.len()),
                    Some(_) => prop_assert_eq!(holders, 1),
                }
                let keys = pr.read(sa_in::READ_KEYS).unwrap();
                prop_assert_eq!(keys.len(), 8 + 8 * pr.registrations.len());
                prop_assert!(pr.registrations.iter().all(|r| r.key != 0), "no registration has key 0");
                if r.is_err() {
                    prop_assert_eq!(&before, pr, "a refused action changes nothing");
                }
                if matches!(action, sa_out::RESERVE | sa_out::RELEASE) {
                    prop_assert_eq!(before.generation, pr.generation);
                }
            }
        }
    }
}

#[test]
fn a_unit_taken_over_raises_the_attentions_its_last_owner_raised() {
    use crate::build::{persistent_reserve_out, persistent_reserve_out_params};
    use crate::lu::{Action, LogicalUnit, Nexus};
    let cfg = crate::LunConfig::new(crate::LunIdentity::new("a/b/c"), 512, 1 << 20).unwrap();
    let (a, b) = (port(1), port(2));
    // The sense of a command from nexus `id` (initiator `p` through target port `tp`).
    let run = |lu: &mut LogicalUnit, id: u64, p: &InitiatorPort, tp: u16, cdb: &[u8], params: &[u8]| {
        let nexus = Nexus { id, luns: &[0], read_only: false, port: p, target_port: tp };
        match lu.command(&nexus, cdb, params) {
            Action::Complete(c) => crate::sense::parse_sense(&c.sense).map(|(k, asc, _)| (k, asc)),
            Action::Backend(_) => None,
        }
    };
    let out = |lu: &mut LogicalUnit, id: u64, p: &InitiatorPort, action: u8, kind: u8, key: u64, sa_key: u64| {
        let params = persistent_reserve_out_params(key, sa_key, true, false);
        run(lu, id, p, 1, &persistent_reserve_out(action, kind, 24), &params)
    };
    let tur = [0u8; 6];
    let mut owner = LogicalUnit::new(cfg.clone());
    owner.persist_every_change(true);
    let mut standby = LogicalUnit::new(cfg);
    standby.persist_every_change(true);
    // On the owner (target port 1): a and b register for every target port, a reserves,
    // b preempts a.
    run(&mut owner, 1, &a, 1, &tur, &[]);
    run(&mut owner, 2, &b, 1, &tur, &[]);
    assert_eq!(out(&mut owner, 1, &a, sa_out::REGISTER, 0, 0, 0xA), None);
    assert_eq!(out(&mut owner, 2, &b, sa_out::REGISTER, 0, 0, 0xB), None);
    assert_eq!(out(&mut owner, 1, &a, sa_out::RESERVE, WE, 0xA, 0), None);
    assert_eq!(out(&mut owner, 2, &b, sa_out::PREEMPT, WE, 0xB, 0xA), None);
    let (pr, events) = owner.take_pr_to_persist().map(|(p, e)| (p.clone(), e.to_vec())).expect("saved");
    assert_eq!(events.iter().map(|e| (e.seq, e.asc)).collect::<Vec<_>>(), [(1, Asc::REGISTRATIONS_PREEMPTED)]);
    // The standby gateway (target port 3) takes over: a's nexus through it, seen now for
    // the first time, hears of the preemption after its power-on attention; b's does not.
    standby.take_over_persistent(pr.clone(), events.clone());
    let attention = Some((SenseKey::UnitAttention as u8, Asc::REGISTRATIONS_PREEMPTED));
    assert_eq!(run(&mut standby, 11, &a, 3, &tur, &[]).map(|s| s.1), Some(Asc::POWER_ON_RESET));
    assert_eq!(run(&mut standby, 11, &a, 3, &tur, &[]), attention);
    assert_eq!(run(&mut standby, 11, &a, 3, &tur, &[]), None);
    assert_eq!(run(&mut standby, 12, &b, 3, &tur, &[]).map(|s| s.1), Some(Asc::POWER_ON_RESET));
    assert_eq!(run(&mut standby, 12, &b, 3, &tur, &[]), None);
    assert_eq!(standby.persistent(), &pr);
    // Taking it over again with nothing new raises nothing again.
    standby.take_over_persistent(pr.clone(), events.clone());
    run(&mut standby, 13, &a, 3, &tur, &[]);
    assert_eq!(run(&mut standby, 13, &a, 3, &tur, &[]), None);
    // Nor does a gateway that found them saved when it started.
    let cfg = crate::LunConfig::new(crate::LunIdentity::new("a/b/c"), 512, 1 << 20).unwrap();
    let mut restarted = LogicalUnit::new(cfg);
    restarted.know_events(events.clone());
    restarted.take_over_persistent(pr, events);
    run(&mut restarted, 21, &a, 3, &tur, &[]);
    assert_eq!(run(&mut restarted, 21, &a, 3, &tur, &[]), None);
}
