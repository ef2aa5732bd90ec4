//! A small blocking iSCSI initiator for tests: CHAP login, then one SCSI command at a time
//! with immediate, unsolicited and solicited data-out and Data-In reassembly. It also sends
//! raw bytes, for tests of what a target does with broken PDUs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use iscsi::bhs::field;
use iscsi::login::{chap_response, hex, unhex};
use iscsi::{text, Bhs, Framer, Opcode, RawPdu};

/// A logged-in connection.
pub struct Client {
    pub stream: TcpStream,
    framer: Framer,
    buf: Vec<u8>,
    itt: u32,
    pub cmd_sn: u32,
    exp_stat_sn: u32,
    /// The target's MaxRecvDataSegmentLength.
    target_max_recv: usize,
    first_burst: usize,
    /// The TSIH the target gave.
    pub tsih: u16,
}

/// A SCSI command's outcome.
#[derive(Debug)]
pub struct Reply {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    /// Residual flags (0x04 overflow, 0x02 underflow) and count.
    #[allow(dead_code)] // read by some tests only
    pub residual: (u8, u32),
}

fn pairs(kv: &[(&str, &str)]) -> Vec<u8> {
    text::emit(&kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
}

fn value(body: &[u8], key: &str) -> Option<String> {
    text::parse(body).ok()?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Client {
    fn send(&mut self, bhs: Bhs, data: &[u8]) {
        let mut out = Vec::new();
        self.framer.emit(bhs, data, &mut out);
        self.stream.write_all(&out).expect("send a PDU");
    }

    /// The next PDU from the target, or `None` when it closed the connection.
    pub fn recv(&mut self) -> Option<RawPdu> {
        loop {
            if let Some((pdu, n)) = self.framer.parse(&self.buf).expect("the target frames correctly") {
                self.buf.drain(..n);
                return Some(pdu);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn login_pdu(&mut self, isid: u64, csg: u8, nsg: u8, transit: bool, kv: &[(&str, &str)]) -> (u8, u8, Vec<u8>, Bhs) {
        let mut b = Bhs::new(Opcode::LoginRequest);
        b.set_immediate(true);
        b.0[1] = (u8::from(transit) << 7) | (csg << 2) | nsg;
        b.set(field::ISID, isid);
        b.set(field::ITT, u64::from(self.itt));
        b.set(field::CMD_SN, u64::from(self.cmd_sn));
        b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
        self.send(b, &pairs(kv));
        let r = self.recv().expect("a login response");
        assert_eq!(r.bhs.opcode(), Some(Opcode::LoginResponse));
        self.exp_stat_sn = r.bhs.get32(field::STAT_SN).wrapping_add(1);
        let class = r.bhs.get(field::STATUS_CLASS) as u8;
        let detail = r.bhs.get(field::STATUS_DETAIL) as u8;
        (class, detail, r.data, r.bhs)
    }

    /// Logs `initiator` into `target` (`None`: a discovery session) with CHAP `secret`;
    /// the error is the login's status class and detail.
    pub fn login(addr: SocketAddr, initiator: &str, target: Option<&str>, secret: &str) -> Result<Client, (u8, u8)> {
        Client::login_isid(addr, initiator, target, secret, 0x8000_0000_0001)
    }

    /// [`Client::login`] with a chosen ISID.
    pub fn login_isid(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        secret: &str,
        isid: u64,
    ) -> Result<Client, (u8, u8)> {
        Client::login_with(addr, initiator, target, secret, isid, false)
    }

    /// [`Client::login_isid`], offering CRC32C header and data digests when `digests`.
    pub fn login_with(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        secret: &str,
        isid: u64,
        digests: bool,
    ) -> Result<Client, (u8, u8)> {
        let stream = TcpStream::connect(addr).expect("connect to the portal");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client {
            stream,
            framer: Framer { max_data: 16 << 20, ..Framer::default() },
            buf: Vec::new(),
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            target_max_recv: 8192,
            first_burst: 0,
            tsih: 0,
        };
        let kind = if target.is_some() { "Normal" } else { "Discovery" };
        let mut first = vec![("InitiatorName", initiator), ("SessionType", kind), ("AuthMethod", "CHAP")];
        if let Some(t) = target {
            first.push(("TargetName", t));
        }
        let (class, detail, body, _) = c.login_pdu(isid, 0, 1, false, &first);
        if class != 0 {
            return Err((class, detail));
        }
        assert_eq!(value(&body, "AuthMethod").as_deref(), Some("CHAP"));
        let (class, detail, body, _) = c.login_pdu(isid, 0, 1, false, &[("CHAP_A", "5")]);
        if class != 0 {
            return Err((class, detail));
        }
        let id: u8 = value(&body, "CHAP_I").unwrap().parse().unwrap();
        let challenge = unhex(&value(&body, "CHAP_C").unwrap()).unwrap();
        let r = hex(&chap_response(id, secret.as_bytes(), &challenge));
        let (class, detail, _, _) = c.login_pdu(isid, 0, 1, true, &[("CHAP_N", initiator), ("CHAP_R", &r)]);
        if class != 0 {
            return Err((class, detail));
        }
        let digest = if digests { "CRC32C" } else { "None" };
        let ops = [
            ("HeaderDigest", digest),
            ("DataDigest", digest),
            ("MaxRecvDataSegmentLength", "262144"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
        ];
        let (class, detail, body, bhs) = c.login_pdu(isid, 1, 3, true, &ops);
        if class != 0 {
            return Err((class, detail));
        }
        c.framer.digests.header = value(&body, "HeaderDigest").as_deref() == Some("CRC32C");
        c.framer.digests.data = value(&body, "DataDigest").as_deref() == Some("CRC32C");
        // A discovery session answers the data keys Irrelevant.
        c.target_max_recv = value(&body, "MaxRecvDataSegmentLength").and_then(|v| v.parse().ok()).unwrap_or(8192);
        c.first_burst = value(&body, "FirstBurstLength").and_then(|v| v.parse().ok()).unwrap_or(65536);
        c.tsih = bhs.get(field::TSIH) as u16;
        Ok(c)
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        self.itt
    }

    /// Runs one SCSI command on `lun` with `data_out`, expecting up to `read_len` bytes.
    pub fn command(&mut self, lun: u16, cdb: &[u8], data_out: &[u8], read_len: u32) -> Option<Reply> {
        let itt = self.next_itt();
        let edtl = if data_out.is_empty() { read_len } else { data_out.len() as u32 };
        let immediate = data_out.len().min(self.first_burst).min(self.target_max_recv);
        let unsolicited = data_out.len().min(self.first_burst);
        let mut b = Bhs::new(Opcode::ScsiCommand);
        let mut flags = 0x01; // simple task attribute
        if read_len > 0 {
            flags |= 0x40;
        }
        if !data_out.is_empty() {
            flags |= 0x20;
        }
        if immediate == unsolicited {
            flags |= 0x80;
        }
        b.0[1] = flags;
        b.set(field::LUN, u64::from(lun) << 48);
        b.set(field::ITT, u64::from(itt));
        b.set(field::EXPECTED_DATA_TRANSFER_LENGTH, u64::from(edtl));
        b.set(field::CMD_SN, u64::from(self.cmd_sn));
        b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(b, &data_out[..immediate]);
        self.data_out(itt, 0xffff_ffff, immediate, unsolicited, data_out);
        let mut data = vec![0u8; read_len as usize];
        loop {
            let p = self.recv()?;
            match p.bhs.opcode() {
                Some(Opcode::R2t) => {
                    let offset = p.bhs.get32(field::BUFFER_OFFSET) as usize;
                    let len = p.bhs.get32(field::DESIRED_DATA_TRANSFER_LENGTH) as usize;
                    let ttt = p.bhs.get32(field::TTT);
                    self.data_out(itt, ttt, offset, offset + len, data_out);
                }
                Some(Opcode::DataIn) => {
                    let offset = p.bhs.get32(field::BUFFER_OFFSET) as usize;
                    data[offset..offset + p.data.len()].copy_from_slice(&p.data);
                    if p.bhs.flags() & 0x01 != 0 {
                        self.exp_stat_sn = p.bhs.get32(field::STAT_SN).wrapping_add(1);
                        let residual = (p.bhs.flags() & 0x06, p.bhs.get32(field::RESIDUAL_COUNT));
                        let moved = edtl as usize - if residual.0 == 0x02 { residual.1 as usize } else { 0 };
                        data.truncate(moved.min(data.len()));
                        return Some(Reply {
                            status: p.bhs.get(field::STATUS) as u8,
                            sense: Vec::new(),
                            data,
                            residual,
                        });
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    self.exp_stat_sn = p.bhs.get32(field::STAT_SN).wrapping_add(1);
                    let residual = (p.bhs.flags() & 0x06, p.bhs.get32(field::RESIDUAL_COUNT));
                    let sense = if p.data.len() > 2 { p.data[2..].to_vec() } else { Vec::new() };
                    if residual.0 == 0x02 {
                        data.truncate((edtl - residual.1) as usize);
                    }
                    return Some(Reply { status: p.bhs.get(field::STATUS) as u8, sense, data, residual });
                }
                Some(Opcode::NopIn) => self.answer_ping(&p),
                other => panic!("unexpected {other:?} while waiting for task {itt:#x}"),
            }
        }
    }

    fn data_out(&mut self, itt: u32, ttt: u32, from: usize, to: usize, data: &[u8]) {
        let mut at = from;
        let mut sn = 0;
        while at < to {
            let n = (to - at).min(self.target_max_recv);
            let mut b = Bhs::new(Opcode::DataOut);
            b.0[1] = if at + n == to { 0x80 } else { 0 };
            b.set(field::ITT, u64::from(itt));
            b.set(field::TTT, u64::from(ttt));
            b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
            b.set(field::DATA_SN, sn);
            b.set(field::BUFFER_OFFSET, at as u64);
            self.send(b, &data[at..at + n]);
            at += n;
            sn += 1;
        }
    }

    fn answer_ping(&mut self, p: &RawPdu) {
        let ttt = p.bhs.get32(field::TTT);
        if ttt != 0xffff_ffff {
            let mut b = Bhs::new(Opcode::NopOut);
            b.set_immediate(true);
            b.set(field::ITT, 0xffff_ffff);
            b.set(field::TTT, u64::from(ttt));
            b.set(field::CMD_SN, u64::from(self.cmd_sn));
            self.send(b, &[]);
        }
    }

    /// WRITE(16) of `data` at `lba`.
    pub fn write(&mut self, lun: u16, lba: u64, data: &[u8], block: usize) -> Reply {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8A;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&((data.len() / block) as u32).to_be_bytes());
        self.command(lun, &cdb, data, 0).expect("the target answers a WRITE")
    }

    /// READ(16) of `blocks` at `lba`.
    pub fn read(&mut self, lun: u16, lba: u64, blocks: u32, block: usize) -> Reply {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.command(lun, &cdb, &[], blocks * block as u32).expect("the target answers a READ")
    }

    /// Sends a Text Request with SendTargets=All; the answer's pairs.
    pub fn send_targets(&mut self) -> Vec<(String, String)> {
        let mut b = Bhs::new(Opcode::TextRequest);
        b.set_immediate(true);
        b.0[1] = 0x80;
        let itt = self.next_itt();
        b.set(field::ITT, u64::from(itt));
        b.set(field::TTT, 0xffff_ffff);
        b.set(field::CMD_SN, u64::from(self.cmd_sn));
        b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
        self.send(b, &pairs(&[("SendTargets", "All")]));
        let r = self.recv().expect("a text response");
        assert_eq!(r.bhs.opcode(), Some(Opcode::TextResponse));
        // SendTargets repeats TargetName and TargetAddress, which negotiation text may not.
        r.data
            .split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8(kv.to_vec()).unwrap();
                let (k, v) = kv.split_once('=').expect("key=value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// Logs out; whether the target answered.
    pub fn logout(mut self) -> bool {
        let mut b = Bhs::new(Opcode::LogoutRequest);
        b.set_immediate(true);
        b.0[1] = 0x80;
        let itt = self.next_itt();
        b.set(field::ITT, u64::from(itt));
        b.set(field::CMD_SN, u64::from(self.cmd_sn));
        b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
        self.send(b, &[]);
        matches!(self.recv(), Some(p) if p.bhs.opcode() == Some(Opcode::LogoutResponse))
    }

    /// The digests in use (as negotiated).
    #[allow(dead_code)] // used by some tests only
    pub fn digests(&self) -> iscsi::Digests {
        self.framer.digests
    }

    /// Sends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// A well-formed BHS of `opcode` with this session's numbers, to break on purpose.
    pub fn bhs(&mut self, opcode: Opcode) -> Bhs {
        let mut b = Bhs::new(opcode);
        let itt = self.next_itt();
        b.set(field::ITT, u64::from(itt));
        b.set(field::CMD_SN, u64::from(self.cmd_sn));
        b.set(field::EXP_STAT_SN, u64::from(self.exp_stat_sn));
        b
    }

    /// Frames and sends a PDU.
    pub fn send_pdu(&mut self, bhs: Bhs, data: &[u8]) {
        self.send(bhs, data);
    }
}
