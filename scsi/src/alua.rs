//! Asymmetric logical unit access (SPC-4 5.15): the target port groups through which a
//! logical unit is reached, each group's access state, REPORT TARGET PORT GROUPS, and what
//! a port in a state other than active may still execute.
//!
//! pangate reports implicit ALUA only (TPGS = 01b): the gateway changes states itself,
//! initiators do not (no SET TARGET PORT GROUPS).

use crate::cdb::Command;
use crate::sense::{Asc, Sense, SenseKey};

/// A target port group's asymmetric access state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    /// Active/optimized.
    ActiveOptimized,
    /// Active/non-optimized.
    ActiveNonOptimized,
    /// Standby.
    Standby,
    /// Unavailable.
    Unavailable,
    /// Transitioning between states.
    Transitioning,
}

impl AccessState {
    /// The ASYMMETRIC ACCESS STATE code.
    pub fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Transitioning => 0xF,
        }
    }

    /// NOT READY with the reason, for a command this state does not execute.
    fn refusal(self) -> Option<Sense> {
        let asc = match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => Asc::TARGET_PORT_IN_STANDBY_STATE,
            AccessState::Unavailable => Asc::TARGET_PORT_IN_UNAVAILABLE_STATE,
            AccessState::Transitioning => Asc::ASYMMETRIC_ACCESS_STATE_TRANSITION,
        };
        Some(Sense::new(SenseKey::NotReady, asc))
    }

    /// Whether a port in this state executes `cmd` (SPC-4 5.15.2.4.4 to 5.15.2.4.6: the
    /// commands that describe the unit and its reservations work in standby; in the
    /// unavailable and transitioning states only those that describe the unit).
    fn executes(self, cmd: &Command) -> bool {
        let describes = matches!(
            cmd,
            Command::Inquiry { .. }
                | Command::ReportLuns { .. }
                | Command::RequestSense { .. }
                | Command::ReportTargetPortGroups { .. }
                | Command::ReportSupportedOpcodes { .. }
        );
        match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => true,
            AccessState::Standby => {
                describes
                    || matches!(
                        cmd,
                        Command::ModeSense(_)
                            | Command::ModeSelect { .. }
                            | Command::PersistentReserveIn { .. }
                            | Command::PersistentReserveOut { .. }
                    )
            }
            AccessState::Unavailable | AccessState::Transitioning => describes,
        }
    }
}

/// One target port group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// TARGET PORT GROUP identifier (not zero).
    pub id: u16,
    /// Its access state.
    pub state: AccessState,
    /// Preferred for this logical unit (PREF).
    pub preferred: bool,
    /// The relative target port identifiers in it.
    pub ports: Vec<u16>,
}

/// The target port groups a logical unit is reached through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alua {
    /// The groups, in the order REPORT TARGET PORT GROUPS lists them.
    pub groups: Vec<PortGroup>,
}

/// The states REPORT TARGET PORT GROUPS says are supported: T_SUP, U_SUP, S_SUP, AN_SUP
/// and AO_SUP (no offline or LBA-dependent states).
const SUPPORTED_STATES: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;

impl Alua {
    /// One active/optimized group (id 1) holding `ports`: a single gateway.
    pub fn single(ports: &[u16]) -> Alua {
        Alua {
            groups: vec![PortGroup {
                id: 1,
                state: AccessState::ActiveOptimized,
                preferred: true,
                ports: ports.to_vec(),
            }],
        }
    }

    /// Whether every group is active (optimized or not), so no command is refused.
    pub fn all_active(&self) -> bool {
        self.groups.iter().all(|g| matches!(g.state, AccessState::ActiveOptimized | AccessState::ActiveNonOptimized))
    }

    /// The group relative target port `port` belongs to.
    pub fn group_of(&self, port: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.ports.contains(&port))
    }

    /// Why `cmd` arriving through `port` is not executed, if it is not. A port in no
    /// group (a command the gateway issues itself) is treated as active.
    pub fn refuses(&self, port: u16, cmd: &Command) -> Option<Sense> {
        let state = self.group_of(port)?.state;
        if state.executes(cmd) {
            None
        } else {
            state.refusal()
        }
    }

    /// Sets group `id`'s state; whether it changed.
    pub fn set_state(&mut self, id: u16, state: AccessState) -> bool {
        match self.groups.iter_mut().find(|g| g.id == id) {
            Some(g) if g.state != state => {
                g.state = state;
                true
            }
            _ => false,
        }
    }

    /// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36), in the length-only format or,
    /// with `extended`, the extended header format (implicit transition time 0: unknown).
    pub fn report(&self, extended: bool) -> Vec<u8> {
        let mut b = vec![0u8; if extended { 8 } else { 4 }];
        if extended {
            b[4] = 0x10;
        }
        for g in &self.groups {
            b.push(u8::from(g.preferred) << 7 | g.state.code());
            b.push(SUPPORTED_STATES);
            b.extend_from_slice(&g.id.to_be_bytes());
            // Reserved, status code (none), vendor specific, port count.
            b.extend_from_slice(&[0, 0, 0, g.ports.len().min(255) as u8]);
            for &p in g.ports.iter().take(255) {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::Extent;

    fn two() -> Alua {
        Alua {
            groups: vec![
                PortGroup { id: 1, state: AccessState::ActiveOptimized, preferred: true, ports: vec![1, 2] },
                PortGroup { id: 2, state: AccessState::Standby, preferred: false, ports: vec![0x101, 0x102] },
            ],
        }
    }

    #[test]
    fn report_bytes_in_both_formats() {
        let a = Alua::single(&[1, 2]);
        assert_eq!(a.report(false), [0, 0, 0, 16, 0x80, 0x8F, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        let e = two().report(true);
        assert_eq!(&e[..8], &[0, 0, 0, 36, 0x10, 0, 0, 0]);
        assert_eq!(&e[8..12], &[0x80, 0x8F, 0, 1]);
        assert_eq!(&e[24..28], &[0x02, 0x8F, 0, 2], "the second group: standby, not preferred");
        assert_eq!(&e[32..36], &[0, 0, 1, 1]);
        assert_eq!(e.len(), 40);
    }

    #[test]
    fn standby_and_transitioning_refuse_all_but_what_describes_the_unit() {
        let mut a = two();
        let read = Command::Read { extent: Extent { lba: 0, blocks: 1 }, fua: false };
        let inquiry = Command::Inquiry { vpd: None, alloc: 36 };
        let mode = Command::ModeSense(crate::cdb::ModeSense {
            ten: false,
            dbd: false,
            llbaa: false,
            page_control: 0,
            page: 0x3F,
            subpage: 0,
            alloc: 255,
        });
        assert_eq!(a.refuses(1, &read), None);
        let standby = Sense::new(SenseKey::NotReady, Asc::TARGET_PORT_IN_STANDBY_STATE);
        assert_eq!(a.refuses(0x101, &read), Some(standby));
        assert_eq!(a.refuses(0x101, &inquiry), None);
        assert_eq!(a.refuses(0x101, &mode), None, "MODE SENSE works in standby");
        assert_eq!(a.refuses(7, &read), None, "a port in no group is the gateway's own");
        assert!(a.set_state(2, AccessState::Transitioning));
        assert!(!a.set_state(2, AccessState::Transitioning), "no change the second time");
        let transition = Sense::new(SenseKey::NotReady, Asc::ASYMMETRIC_ACCESS_STATE_TRANSITION);
        assert_eq!(a.refuses(0x102, &mode), Some(transition));
        assert_eq!(a.refuses(0x102, &inquiry), None);
    }

    #[test]
    fn a_unit_behind_a_standby_group_refuses_io_and_tells_of_the_change() {
        use crate::lu::{Action, LogicalUnit, Nexus};
        use crate::pr::InitiatorPort;
        let cfg = crate::LunConfig::new(crate::LunIdentity::new("a/b/c"), 512, 1 << 20).unwrap();
        let mut lu = LogicalUnit::new(cfg);
        lu.set_alua(two());
        let port = InitiatorPort::new("iqn.2026-12.test:i", 1);
        let run = |lu: &mut LogicalUnit, target_port: u16, cdb: &[u8]| {
            let nexus = Nexus { id: u64::from(target_port), luns: &[0], read_only: false, port: &port, target_port };
            match lu.command(&nexus, cdb, &[]) {
                Action::Complete(c) => c,
                Action::Backend(_) => crate::task::Completion::good(),
            }
        };
        let read = crate::build::read16(0, 1);
        let tur = [0u8; 6];
        // Each nexus's first command reports the power-on attention.
        run(&mut lu, 1, &tur);
        run(&mut lu, 0x101, &tur);
        let c = run(&mut lu, 0x101, &read);
        let sense = crate::sense::parse_sense(&c.sense).map(|(k, a, _)| (k, a));
        assert_eq!(sense, Some((0x02, Asc::TARGET_PORT_IN_STANDBY_STATE)));
        let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let c = run(&mut lu, 0x101, &rtpg);
        assert_eq!(c.status, crate::Status::Good, "REPORT TARGET PORT GROUPS works in standby");
        lu.set_access_state(2, AccessState::ActiveOptimized);
        let c = run(&mut lu, 0x101, &read);
        let sense = crate::sense::parse_sense(&c.sense).map(|(k, a, _)| (k, a));
        assert_eq!(sense, Some((0x06, Asc::ASYMMETRIC_ACCESS_STATE_CHANGED)));
        assert_eq!(run(&mut lu, 0x101, &read).status, crate::Status::Good);
    }
}
