//! The PDUs that are not SCSI commands: NOP-Out and the target's own pings, Text
//! (SendTargets, continued over several responses when long), Logout, and the
//! Asynchronous Message that asks for a logout.

use super::{reject, Closing, Session, Work};
use crate::bhs::Bhs;
use crate::pdu::{NopOut, TargetPdu, TextRequest, RESERVED_TAG};
use crate::text;

impl Session {
    pub(super) fn nop_out(&mut self, n: NopOut) {
        if n.ttt != RESERVED_TAG && self.ping == Some(n.ttt) {
            self.ping = None;
        }
        if n.itt == RESERVED_TAG {
            return;
        }
        let sns = self.status_sns();
        let len = n.data.len().min(self.cfg.params.initiator_max_recv_data as usize);
        self.emit(TargetPdu::NopIn { lun: n.lun, itt: n.itt, ttt: RESERVED_TAG, sns }, &n.data[..len]);
    }

    /// Sends a NOP-In ping; `false` when the last one is still unanswered (the transport
    /// then gives the connection up).
    pub fn ping(&mut self) -> bool {
        if self.ping.is_some() {
            return false;
        }
        let ttt = self.take_ttt();
        self.ping = Some(ttt);
        let sns = self.sns();
        self.emit(TargetPdu::NopIn { lun: 0, itt: RESERVED_TAG, ttt, sns }, &[]);
        true
    }

    pub(super) fn take_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = match self.next_ttt.wrapping_add(1) {
            RESERVED_TAG | 0 => 1,
            n => n,
        };
        t
    }

    /// Asks the initiator to log out within `seconds` (an Asynchronous Message, event 1),
    /// as the target does before it shuts down.
    pub fn request_logout(&mut self, seconds: u16) {
        let sns = self.status_sns();
        self.emit(TargetPdu::Async { event: 1, parameter3: seconds, sns }, &[]);
    }

    pub(super) fn text(&mut self, t: TextRequest) {
        let reject_it = |s: &mut Session| {
            let mut b = Bhs::new(crate::Opcode::TextRequest);
            b.set(crate::bhs::field::ITT, u64::from(t.itt));
            s.reject(reject::PROTOCOL, &b);
        };
        let body = if t.ttt != RESERVED_TAG {
            match self.text_rest.take() {
                Some((ttt, rest)) if ttt == t.ttt => rest,
                _ => return reject_it(self),
            }
        } else {
            let Ok(pairs) = text::parse(&t.data) else { return reject_it(self) };
            let mut answer = Vec::new();
            for (k, v) in pairs {
                if k == "SendTargets" {
                    for (name, addrs) in &self.cfg.targets {
                        if v == "All" || v.is_empty() || v == *name {
                            answer.push(("TargetName".to_string(), name.clone()));
                            for a in addrs {
                                answer.push(("TargetAddress".to_string(), a.clone()));
                            }
                        }
                    }
                } else {
                    answer.push((k, "NotUnderstood".to_string()));
                }
            }
            text::emit(&answer)
        };
        let seg = self.cfg.params.initiator_max_recv_data as usize;
        let (now, rest) = body.split_at(body.len().min(seg));
        let more = !rest.is_empty();
        let ttt = if more { self.take_ttt() } else { RESERVED_TAG };
        if more {
            self.text_rest = Some((ttt, rest.to_vec()));
        }
        let sns = self.status_sns();
        let pdu = TargetPdu::Text { final_bit: !more, continue_bit: more, lun: t.lun, itt: t.itt, ttt, sns };
        let now = now.to_vec();
        self.emit(pdu, &now);
    }

    pub(super) fn logout_request(&mut self, itt: u32, reason: u8) {
        let response = match reason & 0x7f {
            0 | 1 => 0,
            // Removing a connection for recovery needs ERL 2.
            _ => 2,
        };
        // Tasks still gathering data will get none now; those running finish first.
        let collecting: Vec<u32> =
            self.tasks.iter().filter(|(_, t)| t.collect.is_some()).map(|(&itt, _)| itt).collect();
        for t in collecting {
            if let Some(task) = self.tasks.remove(&t) {
                self.credit(task.immediate);
                self.forget(t);
            }
        }
        for t in self.tasks.values_mut() {
            t.aborted = true;
        }
        self.logout = Some((itt, response));
        self.logout_progress();
    }

    pub(super) fn logout_progress(&mut self) {
        if self.tasks.is_empty() {
            if let Some((itt, response)) = self.logout.take() {
                let sns = self.status_sns();
                self.emit(TargetPdu::Logout { itt, response, sns }, &[]);
                self.work.push(Work::Close(Closing::Logout));
            }
        }
    }
}
