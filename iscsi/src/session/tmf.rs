//! Task management (RFC 7143 11.5, 11.6). An aborted task gets no response of its own;
//! the function's response goes out once every task it aborted has left the SCSI target
//! (and, for a reset, once the units have been reset).

use super::{Closing, Held, Session, Work};
use crate::pdu::{TargetPdu, TaskMgmt};

/// Task management function codes.
mod function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Task management responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    /// Function complete.
    Complete = 0,
    /// Task does not exist.
    NoTask = 1,
    /// LUN does not exist.
    NoLun = 2,
    /// Task allegiance reassignment not supported.
    NoReassign = 4,
    /// Task management function not supported.
    NotSupported = 5,
}

/// A function waiting for the tasks it aborted, and for its reset.
#[derive(Debug)]
pub(super) struct Pending {
    itt: u32,
    waiting: Vec<u32>,
    reset: bool,
    cold: bool,
}

impl Session {
    pub(super) fn task_mgmt(&mut self, t: TaskMgmt) {
        let f = t.function & 0x7f;
        let lun = super::decode_lun(t.lun);
        let known_lun = self.cfg.luns.iter().any(|(l, _)| *l == lun);
        match f {
            function::ABORT_TASK => {
                let found = self.abort_where(|itt, _| itt == t.referenced_itt);
                if found.is_empty() && !self.void_held(t.referenced_itt) {
                    return self.tmf_respond(t.itt, TmfResponse::NoTask);
                }
                self.tmf_wait(t.itt, found, false, false);
            }
            function::ABORT_TASK_SET | function::CLEAR_TASK_SET => {
                if !known_lun {
                    return self.tmf_respond(t.itt, TmfResponse::NoLun);
                }
                let found = self.abort_where(|_, task_lun| task_lun == lun);
                self.tmf_wait(t.itt, found, false, false);
            }
            function::LOGICAL_UNIT_RESET => {
                if !known_lun {
                    return self.tmf_respond(t.itt, TmfResponse::NoLun);
                }
                let found = self.abort_where(|_, task_lun| task_lun == lun);
                self.work.push(Work::Reset { tmf: t.itt, luns: vec![lun] });
                self.tmf_wait(t.itt, found, true, false);
            }
            function::TARGET_WARM_RESET | function::TARGET_COLD_RESET => {
                let found = self.abort_where(|_, _| true);
                let luns = self.cfg.luns.iter().map(|(l, _)| *l).collect();
                self.work.push(Work::Reset { tmf: t.itt, luns });
                self.tmf_wait(t.itt, found, true, f == function::TARGET_COLD_RESET);
            }
            function::TASK_REASSIGN => self.tmf_respond(t.itt, TmfResponse::NoReassign),
            function::CLEAR_ACA => self.tmf_respond(t.itt, TmfResponse::NotSupported),
            _ => self.tmf_respond(t.itt, TmfResponse::NotSupported),
        }
    }

    /// Aborts the tasks `which` picks (by ITT and LUN): one still gathering data goes at
    /// once; one running is marked and returned, to be waited for.
    fn abort_where(&mut self, which: impl Fn(u32, u16) -> bool) -> Vec<u32> {
        let picked: Vec<u32> = self.tasks.iter().filter(|(&itt, t)| which(itt, t.lun)).map(|(&itt, _)| itt).collect();
        let mut running = Vec::new();
        for itt in picked {
            let gathering = self.tasks.get(&itt).is_some_and(|t| t.collect.is_some());
            if gathering {
                let task = self.tasks.remove(&itt).expect("picked");
                self.credit(task.immediate);
                self.forget(itt);
            } else if let Some(task) = self.tasks.get_mut(&itt) {
                task.aborted = true;
                running.push(itt);
            }
        }
        running
    }

    /// Voids a command held for a CmdSN gap with this ITT; whether there was one.
    fn void_held(&mut self, itt: u32) -> bool {
        let hit = self.held.iter().find_map(|(&sn, h)| match h {
            Held::Pdu(p) if matches!(&**p, crate::Pdu::ScsiCommand(c) if c.itt == itt) => Some(sn),
            _ => None,
        });
        if let Some(sn) = hit {
            self.held.insert(sn, Held::Void);
            self.forget(itt);
        }
        hit.is_some()
    }

    fn tmf_wait(&mut self, itt: u32, waiting: Vec<u32>, reset: bool, cold: bool) {
        self.tmfs.push(Pending { itt, waiting, reset, cold });
        self.tmf_progress();
    }

    /// The transport reset the units of [`Work::Reset`] `tmf`.
    pub fn reset_done(&mut self, tmf: u32) {
        for p in &mut self.tmfs {
            if p.itt == tmf {
                p.reset = false;
            }
        }
        self.tmf_progress();
    }

    /// Answers every function whose aborted tasks are gone and whose reset is done.
    pub(super) fn tmf_progress(&mut self) {
        let mut i = 0;
        while i < self.tmfs.len() {
            let p = &self.tmfs[i];
            let done = !p.reset && p.waiting.iter().all(|itt| !self.tasks.contains_key(itt));
            if done {
                let p = self.tmfs.remove(i);
                self.tmf_respond(p.itt, TmfResponse::Complete);
                if p.cold {
                    self.work.push(Work::Close(Closing::ColdReset));
                }
            } else {
                i += 1;
            }
        }
    }

    fn tmf_respond(&mut self, itt: u32, response: TmfResponse) {
        let sns = self.status_sns();
        self.emit(TargetPdu::TaskMgmtResponse { itt, response: response as u8, sns }, &[]);
    }
}
