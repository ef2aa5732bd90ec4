//! Persistent reservations (SPC-4 5.13, PERSISTENT RESERVE IN 6.15 and OUT 6.16): the
//! registrations and the reservation of one logical unit, the service actions that change
//! them, and which commands a reservation lets through.
//!
//! An I_T nexus is identified here by its initiator port ([`InitiatorPort`]: an iSCSI name
//! and ISID, the form every pangate front-end uses) and the relative target port it came
//! in on. Registrations outlive the nexus: a node that reconnects with the same name and
//! ISID finds its registration. What this module decides, the logical unit applies: unit
//! attentions to other registrants ([`Effects`]), and state to persist when APTPL is set.

use crate::sense::{Asc, Sense, SenseKey};

/// PERSISTENT RESERVE IN service actions.
pub mod sa_in {
    /// READ KEYS.
    pub const READ_KEYS: u8 = 0;
    /// READ RESERVATION.
    pub const READ_RESERVATION: u8 = 1;
    /// REPORT CAPABILITIES.
    pub const REPORT_CAPABILITIES: u8 = 2;
    /// READ FULL STATUS.
    pub const READ_FULL_STATUS: u8 = 3;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod sa_out {
    /// REGISTER.
    pub const REGISTER: u8 = 0;
    /// RESERVE.
    pub const RESERVE: u8 = 1;
    /// RELEASE.
    pub const RELEASE: u8 = 2;
    /// CLEAR.
    pub const CLEAR: u8 = 3;
    /// PREEMPT.
    pub const PREEMPT: u8 = 4;
    /// PREEMPT AND ABORT.
    pub const PREEMPT_AND_ABORT: u8 = 5;
    /// REGISTER AND IGNORE EXISTING KEY.
    pub const REGISTER_AND_IGNORE: u8 = 6;
    /// REGISTER AND MOVE.
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// Most registrations a logical unit keeps; more get INSUFFICIENT REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 256;

/// The six persistent reservation types (SPC-4 table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    /// Write Exclusive.
    WriteExclusive,
    /// Exclusive Access.
    ExclusiveAccess,
    /// Write Exclusive, Registrants Only.
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access, Registrants Only.
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive, All Registrants.
    WriteExclusiveAllRegistrants,
    /// Exclusive Access, All Registrants.
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// The type of a TYPE field, if it is one.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Its TYPE code.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(self, PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants)
    }

    /// Registered I_T nexuses have full access, holders or not.
    fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads are refused to those without access.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess | PrType::ExclusiveAccessRegistrantsOnly | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// An initiator port: an iSCSI initiator name and, for one port of it, its ISID. Without an
/// ISID it stands for every port of that initiator (a TransportID of format 00h).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InitiatorPort {
    /// The iSCSI name, as given (compared without regard to case, as iSCSI names are).
    pub name: String,
    /// The 6-byte ISID, as a number.
    pub isid: Option<u64>,
}

impl InitiatorPort {
    /// The port `name` with `isid`.
    pub fn new(name: &str, isid: u64) -> InitiatorPort {
        InitiatorPort { name: name.to_owned(), isid: Some(isid & 0xFFFF_FFFF_FFFF) }
    }

    /// Whether this registration's port covers the nexus's port `p` (always one port).
    fn covers(&self, p: &InitiatorPort) -> bool {
        self.name.eq_ignore_ascii_case(&p.name) && (self.isid.is_none() || self.isid == p.isid)
    }

    /// The iSCSI TransportID (SPC-4 7.6.4.6): format 01h with `,i,0x` and the ISID for a
    /// port, format 00h for a whole initiator; NUL-terminated, padded to a multiple of 4.
    pub fn transport_id(&self) -> Vec<u8> {
        let mut name = self.name.clone().into_bytes();
        if let Some(isid) = self.isid {
            name.extend_from_slice(format!(",i,0x{isid:012x}").as_bytes());
        }
        name.push(0);
        let len = name.len().next_multiple_of(4).max(20);
        name.resize(len, 0);
        let format = if self.isid.is_some() { 0x40 } else { 0x00 };
        let mut b = vec![format | PROTOCOL_ISCSI, 0];
        b.extend_from_slice(&(len as u16).to_be_bytes());
        b.extend(name);
        b
    }

    /// Parses one TransportID at the start of `b`: the port and the bytes it took. Only
    /// iSCSI TransportIDs name pangate's initiators; anything else is `None`.
    pub fn parse_transport_id(b: &[u8]) -> Option<(InitiatorPort, usize)> {
        if b.len() < 4 || b[0] & 0x0F != PROTOCOL_ISCSI {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let body = b.get(4..4 + len)?;
        let text = &body[..body.iter().position(|&c| c == 0)?];
        let text = std::str::from_utf8(text).ok()?;
        let port = match b[0] >> 6 {
            0 => InitiatorPort { name: text.to_owned(), isid: None },
            1 => {
                let (name, isid) = text.split_once(",i,0x").or_else(|| text.split_once(",I,0x"))?;
                if isid.len() != 12 {
                    return None;
                }
                InitiatorPort { name: name.to_owned(), isid: Some(u64::from_str_radix(isid, 16).ok()?) }
            }
            _ => return None,
        };
        if port.name.is_empty() || port.name.len() > 223 {
            return None;
        }
        Some((port, 4 + len))
    }
}

const PROTOCOL_ISCSI: u8 = 5;

/// The I_T nexus a command comes from, as reservations see it.
#[derive(Debug, Clone, Copy)]
pub struct ItNexus<'a> {
    /// The initiator port.
    pub port: &'a InitiatorPort,
    /// The relative target port it came in on.
    pub target_port: u16,
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The initiator port.
    pub port: InitiatorPort,
    /// The relative target port, unless `all_tg_pt`.
    pub target_port: u16,
    /// Registered through every target port (ALL_TG_PT).
    pub all_tg_pt: bool,
    /// The reservation key.
    pub key: u64,
    /// Holds the reservation (for all-registrants types, every registration does).
    pub holder: bool,
}

impl Registration {
    fn covers(&self, n: &ItNexus<'_>) -> bool {
        self.port.covers(n.port) && (self.all_tg_pt || self.target_port == n.target_port)
    }
}

/// Where a unit attention goes: every nexus a registration covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionTo {
    /// Initiator port (without ISID: each of its ports).
    pub port: InitiatorPort,
    /// Target port, or every one.
    pub target_port: Option<u16>,
}

impl AttentionTo {
    /// Whether the attention is for `n`.
    pub fn covers(&self, n: &ItNexus<'_>) -> bool {
        self.port.covers(n.port) && self.target_port.is_none_or(|t| t == n.target_port)
    }
}

/// A unit attention a PERSISTENT RESERVE OUT raised, numbered, kept with the saved state
/// by a unit that other gateways may take over, so the one taking it raises it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrEvent {
    /// Its number: one more than the event before it on this unit.
    pub seq: u64,
    /// The nexuses it is for.
    pub to: AttentionTo,
    /// The attention.
    pub asc: Asc,
}

/// The most events a unit keeps.
pub const MAX_PR_EVENTS: usize = 32;

/// What a PERSISTENT RESERVE OUT did beyond its status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Unit attentions to establish.
    pub attentions: Vec<(AttentionTo, Asc)>,
    /// Nexuses whose tasks PREEMPT AND ABORT aborts.
    pub aborted: Vec<AttentionTo>,
    /// The state changed in a way to persist (APTPL was set, or was just cleared).
    pub persist: bool,
}

/// Why a PERSISTENT RESERVE OUT was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> PrError {
        PrError::Check(s)
    }
}

/// How a command is treated under a reservation (SPC-4 table 66, SBC-3 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, READ CAPACITY, ...).
    Any,
    /// Reads the medium or its state: refused by the exclusive-access types.
    Read,
    /// Changes the medium or the unit: refused by every type.
    Write,
}

/// A logical unit's persistent reservation state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persistent {
    /// PRgeneration.
    pub generation: u32,
    /// The registrations.
    pub registrations: Vec<Registration>,
    /// The reservation's type, if there is one (its holders are marked in `registrations`).
    pub reservation: Option<PrType>,
    /// Activate Persist Through Power Loss: the state survives a restart.
    pub aptpl: bool,
}

/// The fields of a PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3, 6.16.4).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutParams {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
    /// SPEC_I_PT's TransportIDs, or REGISTER AND MOVE's one.
    ports: Vec<InitiatorPort>,
    /// REGISTER AND MOVE: unregister the source nexus.
    unreg: bool,
    /// REGISTER AND MOVE: the relative target port of the destination.
    move_target_port: u16,
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("eight bytes"))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("four bytes"))
}

fn parse_params(action: u8, p: &[u8]) -> Result<OutParams, Sense> {
    if p.len() < 24 {
        return Err(Sense::parameter_list_length());
    }
    let (key, sa_key) = (be64(&p[0..8]), be64(&p[8..16]));
    if action == sa_out::REGISTER_AND_MOVE {
        let len = be32(&p[20..24]) as usize;
        if p.len() < 24 + len || len < 24 {
            return Err(Sense::parameter_list_length());
        }
        let Some((port, used)) = InitiatorPort::parse_transport_id(&p[24..24 + len]) else {
            return Err(Sense::invalid_parameter(24, None));
        };
        if port.isid.is_none() || used > len {
            return Err(Sense::invalid_parameter(24, None));
        }
        return Ok(OutParams {
            key,
            sa_key,
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: p[17] & 0x01 != 0,
            ports: vec![port],
            unreg: p[17] & 0x02 != 0,
            move_target_port: u16::from_be_bytes([p[18], p[19]]),
        });
    }
    let flags = p[20];
    if flags & !0x0D != 0 {
        return Err(Sense::invalid_parameter(20, None));
    }
    let spec_i_pt = flags & 0x08 != 0;
    let mut ports = Vec::new();
    if spec_i_pt {
        if p.len() < 28 {
            return Err(Sense::parameter_list_length());
        }
        let len = be32(&p[24..28]) as usize;
        if p.len() < 28 + len {
            return Err(Sense::parameter_list_length());
        }
        let mut at = 28;
        while at < 28 + len {
            match InitiatorPort::parse_transport_id(&p[at..28 + len]) {
                Some((port, used)) => {
                    ports.push(port);
                    at += used;
                }
                None => return Err(Sense::invalid_parameter(at as u16, None)),
            }
        }
    } else if p.len() != 24 {
        return Err(Sense::parameter_list_length());
    }
    Ok(OutParams {
        key,
        sa_key,
        spec_i_pt,
        all_tg_pt: flags & 0x04 != 0,
        aptpl: flags & 0x01 != 0,
        ports,
        unreg: false,
        move_target_port: 0,
    })
}

impl Persistent {
    fn find(&self, n: &ItNexus<'_>) -> Option<usize> {
        self.registrations.iter().position(|r| r.covers(n))
    }

    /// Whether `n` is registered.
    pub fn registered(&self, n: &ItNexus<'_>) -> bool {
        self.find(n).is_some()
    }

    /// Whether `n` holds the reservation.
    pub fn holds(&self, n: &ItNexus<'_>) -> bool {
        self.find(n).is_some_and(|i| self.registrations[i].holder)
    }

    /// Whether a command of class `access` from `n` conflicts with the reservation.
    pub fn conflicts(&self, n: &ItNexus<'_>, access: Access) -> bool {
        let Some(kind) = self.reservation else { return false };
        if access == Access::Any {
            return false;
        }
        let allowed = if kind.registrants_access() { self.registered(n) } else { self.holds(n) };
        if allowed {
            return false;
        }
        access == Access::Write || kind.exclusive_access()
    }

    fn attention_to(r: &Registration) -> AttentionTo {
        AttentionTo { port: r.port.clone(), target_port: (!r.all_tg_pt).then_some(r.target_port) }
    }

    /// Unit attention `asc` for every registration but `except`'s.
    fn tell_others(&self, except: Option<usize>, asc: Asc, fx: &mut Effects) {
        for (i, r) in self.registrations.iter().enumerate() {
            if Some(i) != except {
                fx.attentions.push((Self::attention_to(r), asc));
            }
        }
    }

    /// Removes registration `i`, releasing the reservation if that leaves it without a
    /// holder; a released registrants-only reservation tells the other registrants.
    fn unregister(&mut self, i: usize, fx: &mut Effects) {
        let r = self.registrations.remove(i);
        let Some(kind) = self.reservation else { return };
        let released = if kind.all_registrants() { self.registrations.is_empty() } else { r.holder };
        if released {
            self.reservation = None;
            for r in &mut self.registrations {
                r.holder = false;
            }
            if matches!(kind, PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly) {
                self.tell_others(None, Asc::RESERVATIONS_RELEASED, fx);
            }
        }
    }

    fn add(&mut self, reg: Registration) -> Result<(), PrError> {
        if self.registrations.len() >= MAX_REGISTRATIONS {
            return Err(PrError::Check(Sense::new(SenseKey::IllegalRequest, Asc::INSUFFICIENT_REGISTRATION_RESOURCES)));
        }
        let holder = reg.holder || self.reservation.is_some_and(PrType::all_registrants);
        self.registrations.push(Registration { holder, ..reg });
        Ok(())
    }

    /// Executes PERSISTENT RESERVE OUT service action `action` with TYPE/SCOPE byte
    /// `scope_type` and parameter list `params` from `n`.
    pub fn out(&mut self, n: &ItNexus<'_>, action: u8, scope_type: u8, params: &[u8]) -> Result<Effects, PrError> {
        let p = parse_params(action, params)?;
        let mut fx = Effects::default();
        let aptpl_before = self.aptpl;
        let mine = self.find(n);
        match action {
            sa_out::REGISTER | sa_out::REGISTER_AND_IGNORE => {
                let ignore = action == sa_out::REGISTER_AND_IGNORE;
                if ignore && p.spec_i_pt {
                    return Err(Sense::invalid_parameter(20, Some(3)).into());
                }
                match mine {
                    None => {
                        if !ignore && p.key != 0 {
                            return Err(PrError::Conflict);
                        }
                        if p.sa_key == 0 {
                            // Registering key 0 while unregistered does nothing.
                            return Ok(fx);
                        }
                        let reg = |port: InitiatorPort, target_port| Registration {
                            port,
                            target_port,
                            all_tg_pt: p.all_tg_pt,
                            key: p.sa_key,
                            holder: false,
                        };
                        let mut new = vec![reg(n.port.clone(), n.target_port)];
                        for port in &p.ports {
                            let other = ItNexus { port, target_port: n.target_port };
                            if self.registered(&other)
                                || new.iter().any(|r| r.port.covers(port) || port.covers(&r.port))
                            {
                                return Err(Sense::invalid_parameter(24, None).into());
                            }
                            new.push(reg(port.clone(), n.target_port));
                        }
                        if self.registrations.len() + new.len() > MAX_REGISTRATIONS {
                            return Err(PrError::Check(Sense::new(
                                SenseKey::IllegalRequest,
                                Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                            )));
                        }
                        for r in new {
                            self.add(r)?;
                        }
                    }
                    Some(i) => {
                        if !ignore && p.key != self.registrations[i].key {
                            return Err(PrError::Conflict);
                        }
                        if p.spec_i_pt {
                            return Err(Sense::invalid_parameter(20, Some(3)).into());
                        }
                        if p.sa_key == 0 {
                            self.unregister(i, &mut fx);
                        } else {
                            self.registrations[i].key = p.sa_key;
                        }
                    }
                }
                self.aptpl = p.aptpl;
                self.generation = self.generation.wrapping_add(1);
            }
            sa_out::RESERVE => {
                let i = self.check_key(mine, p.key)?;
                let kind = check_scope_type(scope_type)?;
                match self.reservation {
                    None => {
                        self.reservation = Some(kind);
                        if kind.all_registrants() {
                            self.registrations.iter_mut().for_each(|r| r.holder = true);
                        } else {
                            self.registrations[i].holder = true;
                        }
                    }
                    // The holder reserving again with the same type is GOOD; anything else
                    // conflicts.
                    Some(held) if held == kind && self.registrations[i].holder => {}
                    Some(_) => return Err(PrError::Conflict),
                }
            }
            sa_out::RELEASE => {
                let i = self.check_key(mine, p.key)?;
                let Some(held) = self.reservation else { return Ok(fx) };
                if !self.registrations[i].holder {
                    return Ok(fx);
                }
                if check_scope_type(scope_type)? != held {
                    return Err(Sense::new(SenseKey::IllegalRequest, Asc::INVALID_RELEASE_OF_PR).into());
                }
                self.reservation = None;
                self.registrations.iter_mut().for_each(|r| r.holder = false);
                if held.registrants_access() {
                    self.tell_others(Some(i), Asc::RESERVATIONS_RELEASED, &mut fx);
                }
            }
            sa_out::CLEAR => {
                let i = self.check_key(mine, p.key)?;
                self.tell_others(Some(i), Asc::RESERVATIONS_PREEMPTED, &mut fx);
                self.registrations.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
            }
            sa_out::PREEMPT | sa_out::PREEMPT_AND_ABORT => {
                let i = self.check_key(mine, p.key)?;
                let kind = check_scope_type(scope_type)?;
                self.preempt(i, kind, p.sa_key, action == sa_out::PREEMPT_AND_ABORT, &mut fx)?;
                self.generation = self.generation.wrapping_add(1);
            }
            sa_out::REGISTER_AND_MOVE => {
                let i = self.check_key(mine, p.key)?;
                self.register_and_move(i, n, scope_type, &p)?;
                self.aptpl = p.aptpl;
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
        fx.persist = self.aptpl || aptpl_before;
        Ok(fx)
    }

    /// The registration of the nexus, whose key must be `key`.
    fn check_key(&self, mine: Option<usize>, key: u64) -> Result<usize, PrError> {
        match mine {
            Some(i) if self.registrations[i].key == key => Ok(i),
            _ => Err(PrError::Conflict),
        }
    }

    /// PREEMPT (SPC-4 5.13.11.4) by registration `me`.
    fn preempt(&mut self, me: usize, kind: PrType, sa_key: u64, abort: bool, fx: &mut Effects) -> Result<(), PrError> {
        let holder_key = match self.reservation {
            Some(k) if !k.all_registrants() => self.registrations.iter().find(|r| r.holder).map(|r| r.key),
            _ => None,
        };
        let all_registrants = self.reservation.is_some_and(PrType::all_registrants);
        let me_id = (self.registrations[me].port.clone(), self.registrations[me].target_port);
        let is_me = |r: &Registration| r.port == me_id.0 && r.target_port == me_id.1;
        // Which registrations go: those with the key, or for an all-registrants
        // reservation preempted with key 0, everyone else.
        let doomed = |r: &Registration, sa_key: u64| {
            if all_registrants && sa_key == 0 {
                !is_me(r)
            } else {
                r.key == sa_key && !(is_me(r) && holder_key == Some(sa_key))
            }
        };
        if sa_key == 0 && !all_registrants {
            return Err(Sense::invalid_parameter(8, None).into());
        }
        let takes_reservation = (all_registrants && sa_key == 0) || holder_key == Some(sa_key);
        let removed: Vec<Registration> = self.registrations.iter().filter(|r| doomed(r, sa_key)).cloned().collect();
        if removed.is_empty() && !takes_reservation {
            return Err(PrError::Conflict);
        }
        for r in &removed {
            fx.attentions.push((Self::attention_to(r), Asc::REGISTRATIONS_PREEMPTED));
            if abort {
                fx.aborted.push(Self::attention_to(r));
            }
        }
        self.registrations.retain(|r| !doomed(r, sa_key));
        if takes_reservation {
            let changed = self.reservation != Some(kind);
            self.reservation = Some(kind);
            for r in &mut self.registrations {
                r.holder = kind.all_registrants() || is_me(r);
            }
            if changed {
                let me = self.registrations.iter().position(is_me);
                self.tell_others(me, Asc::RESERVATIONS_RELEASED, fx);
            }
        }
        Ok(())
    }

    /// REGISTER AND MOVE (SPC-4 5.13.8) by registration `me`, the reservation holder.
    fn register_and_move(&mut self, me: usize, n: &ItNexus<'_>, scope_type: u8, p: &OutParams) -> Result<(), PrError> {
        // The reservation moves as it is; the TYPE field must still be a valid one.
        check_scope_type(scope_type)?;
        match self.reservation {
            None => return Ok(()),
            Some(k) if k.all_registrants() => return Err(Sense::invalid_cdb_field(2, None).into()),
            Some(_) if !self.registrations[me].holder => return Err(PrError::Conflict),
            Some(_) => {}
        }
        if p.sa_key == 0 {
            return Err(Sense::invalid_parameter(8, None).into());
        }
        let dest = &p.ports[0];
        let dest_nexus = ItNexus { port: dest, target_port: p.move_target_port };
        if dest_nexus.port.covers(n.port) && p.move_target_port == n.target_port {
            return Err(Sense::invalid_parameter(24, None).into());
        }
        let dest_registered = self.find(&dest_nexus);
        if dest_registered.is_none() && self.registrations.len() >= MAX_REGISTRATIONS {
            return Err(PrError::Check(Sense::new(SenseKey::IllegalRequest, Asc::INSUFFICIENT_REGISTRATION_RESOURCES)));
        }
        for r in &mut self.registrations {
            r.holder = false;
        }
        match dest_registered {
            Some(d) => {
                self.registrations[d].key = p.sa_key;
                self.registrations[d].holder = true;
            }
            None => self.add(Registration {
                port: dest.clone(),
                target_port: p.move_target_port,
                all_tg_pt: false,
                key: p.sa_key,
                holder: true,
            })?,
        }
        if p.unreg {
            if let Some(me) = self.find(n) {
                self.registrations.remove(me);
            }
        }
        Ok(())
    }

    /// Answers PERSISTENT RESERVE IN service action `action` (the whole answer; the caller
    /// cuts it to the allocation length).
    pub fn read(&self, action: u8) -> Result<Vec<u8>, Sense> {
        let mut b = self.generation.to_be_bytes().to_vec();
        match action {
            sa_in::READ_KEYS => {
                b.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
                for r in &self.registrations {
                    b.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            sa_in::READ_RESERVATION => match self.reservation {
                None => b.extend_from_slice(&0u32.to_be_bytes()),
                Some(kind) => {
                    b.extend_from_slice(&16u32.to_be_bytes());
                    // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
                    let key = if kind.all_registrants() {
                        0
                    } else {
                        self.registrations.iter().find(|r| r.holder).map_or(0, |r| r.key)
                    };
                    b.extend_from_slice(&key.to_be_bytes());
                    b.extend_from_slice(&[0, 0, 0, 0, 0, kind.code(), 0, 0]);
                }
            },
            sa_in::REPORT_CAPABILITIES => {
                // CRH, SIP_C, ATP_C, PTPL_C; TMV, ALLOW COMMANDS 001b (RESERVE/RELEASE
                // as compatible reservation handling says), PTPL_A; the six types.
                let ptpl_a = u8::from(self.aptpl);
                b = vec![0, 8, 0x10 | 0x08 | 0x04 | 0x01, 0x80 | 0x10 | ptpl_a, 0xEA, 0x01, 0, 0];
            }
            sa_in::READ_FULL_STATUS => {
                let mut descs = Vec::new();
                for r in &self.registrations {
                    descs.extend_from_slice(&r.key.to_be_bytes());
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    descs.push(u8::from(r.all_tg_pt) << 1 | u8::from(r.holder));
                    descs.push(if r.holder { self.reservation.map_or(0, PrType::code) } else { 0 });
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    descs.extend_from_slice(&(if r.all_tg_pt { 0 } else { r.target_port }).to_be_bytes());
                    let tid = r.port.transport_id();
                    descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    descs.extend(tid);
                }
                b.extend_from_slice(&(descs.len() as u32).to_be_bytes());
                b.extend(descs);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        Ok(b)
    }
}

/// The reservation type of a TYPE/SCOPE byte; only LU_SCOPE (0) exists.
fn check_scope_type(scope_type: u8) -> Result<PrType, Sense> {
    if scope_type >> 4 != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    PrType::from_code(scope_type & 0x0F).ok_or(Sense::invalid_cdb_field(2, Some(3)))
}

#[cfg(test)]
mod tests;
