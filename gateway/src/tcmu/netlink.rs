//! The TCM-USER generic netlink family: the kernel announces devices being added, removed
//! and reconfigured on its `config` multicast group, and the handler answers each with the
//! matching `_DONE` command and a status. Messages are parsed and built with the
//! netlink-packet crates; nothing here touches a socket.

use netlink_packet_core::{
    emit_i32, emit_u32, emit_u64, parse_i32, parse_string, parse_u32, parse_u64, parse_u8, DecodeError, DefaultNla,
    Emitable, ErrorContext, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, NLM_F_REQUEST,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// The family's name as the kernel registers it.
pub const FAMILY: &str = "TCM-USER";
/// Its multicast group for device events.
pub const GROUP: &str = "config";
/// The family's version (`TCMU_VERSION` 2.0).
const VERSION: u8 = 2;

/// `enum tcmu_genl_cmd`.
pub mod cmd {
    /// A device was created.
    pub const ADDED_DEVICE: u8 = 1;
    /// A device is going away.
    pub const REMOVED_DEVICE: u8 = 2;
    /// A device's settings changed.
    pub const RECONFIG_DEVICE: u8 = 3;
    /// The handler's answer to ADDED_DEVICE.
    pub const ADDED_DEVICE_DONE: u8 = 4;
    /// The handler's answer to REMOVED_DEVICE.
    pub const REMOVED_DEVICE_DONE: u8 = 5;
    /// The handler's answer to RECONFIG_DEVICE.
    pub const RECONFIG_DEVICE_DONE: u8 = 6;
    /// The handler tells the kernel what it supports.
    pub const SET_FEATURES: u8 = 7;
}

/// `enum tcmu_genl_attr` values.
mod attr {
    pub const DEVICE: u16 = 1;
    pub const MINOR: u16 = 2;
    pub const DEV_CFG: u16 = 4;
    pub const DEV_SIZE: u16 = 5;
    pub const WRITECACHE: u16 = 6;
    pub const CMD_STATUS: u16 = 7;
    pub const DEVICE_ID: u16 = 8;
    pub const SUPP_KERN_CMD_REPLY: u16 = 9;
}

/// One attribute of a TCM-USER message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcmuAttr {
    /// `TCMU_ATTR_DEVICE`: the uio device's name, `tcm-user/<hba>/<device>/<config>`.
    Device(String),
    /// `TCMU_ATTR_MINOR`: the uio minor (`/dev/uio<minor>`).
    Minor(u32),
    /// `TCMU_ATTR_DEV_CFG`: a new config string.
    DevCfg(String),
    /// `TCMU_ATTR_DEV_SIZE`: a new size in bytes.
    DevSize(u64),
    /// `TCMU_ATTR_WRITECACHE`: write cache on (1) or off (0).
    WriteCache(u8),
    /// `TCMU_ATTR_CMD_STATUS`: 0 or a negative errno.
    CmdStatus(i32),
    /// `TCMU_ATTR_DEVICE_ID`: the kernel's device index, echoed in answers.
    DeviceId(u32),
    /// `TCMU_ATTR_SUPP_KERN_CMD_REPLY`: the handler answers device events.
    SuppKernCmdReply(u8),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for TcmuAttr {
    fn value_len(&self) -> usize {
        match self {
            TcmuAttr::Device(s) | TcmuAttr::DevCfg(s) => s.len() + 1,
            TcmuAttr::Minor(_) | TcmuAttr::CmdStatus(_) | TcmuAttr::DeviceId(_) => 4,
            TcmuAttr::DevSize(_) => 8,
            TcmuAttr::WriteCache(_) | TcmuAttr::SuppKernCmdReply(_) => 1,
            TcmuAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            TcmuAttr::Device(_) => attr::DEVICE,
            TcmuAttr::Minor(_) => attr::MINOR,
            TcmuAttr::DevCfg(_) => attr::DEV_CFG,
            TcmuAttr::DevSize(_) => attr::DEV_SIZE,
            TcmuAttr::WriteCache(_) => attr::WRITECACHE,
            TcmuAttr::CmdStatus(_) => attr::CMD_STATUS,
            TcmuAttr::DeviceId(_) => attr::DEVICE_ID,
            TcmuAttr::SuppKernCmdReply(_) => attr::SUPP_KERN_CMD_REPLY,
            TcmuAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            TcmuAttr::Device(s) | TcmuAttr::DevCfg(s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            TcmuAttr::Minor(v) | TcmuAttr::DeviceId(v) => emit_u32(buffer, *v).expect("4 bytes"),
            TcmuAttr::CmdStatus(v) => emit_i32(buffer, *v).expect("4 bytes"),
            TcmuAttr::DevSize(v) => emit_u64(buffer, *v).expect("8 bytes"),
            TcmuAttr::WriteCache(v) | TcmuAttr::SuppKernCmdReply(v) => buffer[0] = *v,
            TcmuAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TcmuAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            attr::DEVICE => TcmuAttr::Device(parse_string(v).context("TCMU_ATTR_DEVICE")?),
            attr::MINOR => TcmuAttr::Minor(parse_u32(v).context("TCMU_ATTR_MINOR")?),
            attr::DEV_CFG => TcmuAttr::DevCfg(parse_string(v).context("TCMU_ATTR_DEV_CFG")?),
            attr::DEV_SIZE => TcmuAttr::DevSize(parse_u64(v).context("TCMU_ATTR_DEV_SIZE")?),
            attr::WRITECACHE => TcmuAttr::WriteCache(parse_u8(v).context("TCMU_ATTR_WRITECACHE")?),
            attr::CMD_STATUS => TcmuAttr::CmdStatus(parse_i32(v).context("TCMU_ATTR_CMD_STATUS")?),
            attr::DEVICE_ID => TcmuAttr::DeviceId(parse_u32(v).context("TCMU_ATTR_DEVICE_ID")?),
            attr::SUPP_KERN_CMD_REPLY => {
                TcmuAttr::SuppKernCmdReply(parse_u8(v).context("TCMU_ATTR_SUPP_KERN_CMD_REPLY")?)
            }
            _ => TcmuAttr::Other(DefaultNla::parse(buf).context("TCM-USER attribute")?),
        })
    }
}

/// A TCM-USER message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcmuMessage {
    /// `TCMU_CMD_*`.
    pub cmd: u8,
    /// Attributes.
    pub attrs: Vec<TcmuAttr>,
}

impl GenlFamily for TcmuMessage {
    fn family_name() -> &'static str {
        FAMILY
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for TcmuMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for TcmuMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| TcmuAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()
            .context("TCM-USER attributes")?;
        Ok(TcmuMessage { cmd: header.cmd, attrs })
    }
}

/// What the kernel said about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A device was created.
    Added {
        /// uio name.
        name: String,
        /// uio minor.
        minor: u32,
        /// Kernel device index, to echo.
        id: Option<u32>,
    },
    /// A device is going away.
    Removed {
        /// uio name.
        name: String,
        /// uio minor.
        minor: u32,
        /// Kernel device index, to echo.
        id: Option<u32>,
    },
    /// A device's settings changed; only what changed is present.
    Reconfig {
        /// uio name.
        name: String,
        /// uio minor.
        minor: u32,
        /// Kernel device index, to echo.
        id: Option<u32>,
        /// New config string.
        config: Option<String>,
        /// New size in bytes.
        size: Option<u64>,
        /// New write-cache setting.
        write_cache: Option<bool>,
    },
}

impl DeviceEvent {
    /// Reads a kernel message; `None` for commands that are not device events or that lack
    /// the device's name or minor.
    pub fn from_message(m: &TcmuMessage) -> Option<DeviceEvent> {
        let name = m.attrs.iter().find_map(|a| if let TcmuAttr::Device(s) = a { Some(s.clone()) } else { None })?;
        let minor = m.attrs.iter().find_map(|a| if let TcmuAttr::Minor(v) = a { Some(*v) } else { None })?;
        let id = m.attrs.iter().find_map(|a| if let TcmuAttr::DeviceId(v) = a { Some(*v) } else { None });
        Some(match m.cmd {
            cmd::ADDED_DEVICE => DeviceEvent::Added { name, minor, id },
            cmd::REMOVED_DEVICE => DeviceEvent::Removed { name, minor, id },
            cmd::RECONFIG_DEVICE => DeviceEvent::Reconfig {
                name,
                minor,
                id,
                config: m.attrs.iter().find_map(|a| if let TcmuAttr::DevCfg(s) = a { Some(s.clone()) } else { None }),
                size: m.attrs.iter().find_map(|a| if let TcmuAttr::DevSize(v) = a { Some(*v) } else { None }),
                write_cache: m.attrs.iter().find_map(|a| {
                    if let TcmuAttr::WriteCache(v) = a {
                        Some(*v != 0)
                    } else {
                        None
                    }
                }),
            },
            _ => return None,
        })
    }

    /// The answer the kernel waits for: the `_DONE` command with `status` (0 or a negative
    /// errno) and the device id echoed.
    pub fn reply(&self, status: i32) -> TcmuMessage {
        let (cmd, id) = match self {
            DeviceEvent::Added { id, .. } => (cmd::ADDED_DEVICE_DONE, id),
            DeviceEvent::Removed { id, .. } => (cmd::REMOVED_DEVICE_DONE, id),
            DeviceEvent::Reconfig { id, .. } => (cmd::RECONFIG_DEVICE_DONE, id),
        };
        let mut attrs = vec![TcmuAttr::CmdStatus(status)];
        attrs.extend(id.map(TcmuAttr::DeviceId));
        TcmuMessage { cmd, attrs }
    }

    /// The uio minor.
    pub fn minor(&self) -> u32 {
        match self {
            DeviceEvent::Added { minor, .. }
            | DeviceEvent::Removed { minor, .. }
            | DeviceEvent::Reconfig { minor, .. } => *minor,
        }
    }
}

/// The message that tells the kernel the handler answers device events.
pub fn set_features() -> TcmuMessage {
    TcmuMessage { cmd: cmd::SET_FEATURES, attrs: vec![TcmuAttr::SuppKernCmdReply(1)] }
}

/// A whole netlink message (header, generic header, attributes) for the family `family_id`.
pub fn encode(m: TcmuMessage, family_id: u16, seq: u32) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(m);
    genl.set_resolved_family_id(family_id);
    genl.finalize();
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = NLM_F_REQUEST;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// What one datagram from the kernel holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A TCM-USER message.
    Message(TcmuMessage),
    /// An error or acknowledgement (code 0) for one of ours.
    Ack(i32),
}

/// Parses every netlink message in a datagram (they may be batched).
pub fn decode(mut buf: &[u8]) -> Result<Vec<Incoming>, DecodeError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let msg = NetlinkMessage::<GenlMessage<TcmuMessage>>::deserialize(buf)?;
        let len = (msg.header.length as usize).next_multiple_of(4);
        match msg.payload {
            NetlinkPayload::InnerMessage(g) => out.push(Incoming::Message(g.payload)),
            NetlinkPayload::Error(e) => out.push(Incoming::Ack(e.code.map_or(0, |c| c.get()))),
            _ => {}
        }
        if len == 0 || len > buf.len() {
            break;
        }
        buf = &buf[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_device_round_trips_in_the_wire_format() {
        let m = TcmuMessage {
            cmd: cmd::ADDED_DEVICE,
            attrs: vec![
                TcmuAttr::Device("tcm-user/1/disk0/pangate/p/n/0/0".into()),
                TcmuAttr::Minor(3),
                TcmuAttr::DeviceId(17),
            ],
        };
        let bytes = encode(m.clone(), 0x1d, 9);
        // nlmsghdr: length, type = family id, flags, seq; then genlmsghdr: cmd, version.
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x1d);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!((bytes[16], bytes[17]), (cmd::ADDED_DEVICE, VERSION));
        // First attribute: TCMU_ATTR_DEVICE, NUL-terminated, padded to 4.
        assert_eq!(u16::from_ne_bytes([bytes[22], bytes[23]]), attr::DEVICE);
        assert_eq!(&bytes[24..32], b"tcm-user");
        let back = decode(&bytes).unwrap();
        assert_eq!(back, vec![Incoming::Message(m.clone())]);
        let ev = DeviceEvent::from_message(&m).unwrap();
        assert_eq!(ev, DeviceEvent::Added { name: "tcm-user/1/disk0/pangate/p/n/0/0".into(), minor: 3, id: Some(17) });
        let reply = ev.reply(-22);
        assert_eq!(reply.cmd, cmd::ADDED_DEVICE_DONE);
        assert_eq!(reply.attrs, vec![TcmuAttr::CmdStatus(-22), TcmuAttr::DeviceId(17)]);
    }

    #[test]
    fn reconfig_carries_only_what_changed() {
        let m = TcmuMessage {
            cmd: cmd::RECONFIG_DEVICE,
            attrs: vec![TcmuAttr::Device("tcm-user/1/d/x".into()), TcmuAttr::Minor(0), TcmuAttr::WriteCache(0)],
        };
        let back = decode(&encode(m, 30, 1)).unwrap();
        let Incoming::Message(m) = &back[0] else { panic!("{back:?}") };
        match DeviceEvent::from_message(m).unwrap() {
            DeviceEvent::Reconfig { write_cache, size, config, .. } => {
                assert_eq!((write_cache, size, config), (Some(false), None, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_attributes_are_kept_and_garbage_is_an_error() {
        let m = TcmuMessage { cmd: 99, attrs: vec![TcmuAttr::Other(DefaultNla::new(42, vec![1, 2, 3]))] };
        let back = decode(&encode(m.clone(), 30, 1)).unwrap();
        assert_eq!(back, vec![Incoming::Message(m.clone())]);
        assert_eq!(DeviceEvent::from_message(&m), None);
        let mut bytes = encode(set_features(), 30, 2);
        bytes[20] = 200; // attribute length beyond the message
        assert!(decode(&bytes).is_err());
        assert!(decode(&[1, 2, 3]).unwrap().is_empty());
    }
}
