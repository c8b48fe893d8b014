//! Length-prefixed messages read from one direction of a connection, as PostgreSQL, MySQL
//! and DNS over TCP send them. Only the first bytes of each payload are kept; the rest,
//! and bytes past the capture, are skipped by their count, so a large message costs
//! nothing to frame.

/// Bytes of a message's payload kept: a query's start, a tag, an error's fields.
pub const MAX_KEPT: usize = 512;

/// How a protocol's messages start.
pub trait Header {
    /// Bytes of the header before the next payload.
    fn size(&self) -> usize;
    /// The payload's length, from a complete header; None when no message starts so.
    fn payload_length(&mut self, header: &[u8]) -> Option<u64>;
}

/// One direction's stream of messages.
#[derive(Debug, Clone, Default)]
pub struct Messages<H> {
    /// What the protocol keeps of the message being read (its type, its sequence).
    pub head: H,
    header: Vec<u8>,
    in_message: bool,
    /// Payload bytes still to come of the message being read, and its first ones.
    left: u64,
    kept: Vec<u8>,
    /// Framing was lost for good: bytes past the capture outside a payload, a header no
    /// message has, or a turn to TLS.
    pub lost: bool,
    pub losses: u64,
}

impl<H: Header> Messages<H> {
    pub fn new(head: H) -> Messages<H> {
        Messages {
            head,
            header: Vec::new(),
            in_message: false,
            left: 0,
            kept: Vec::new(),
            lost: false,
            losses: 0,
        }
    }

    /// Bytes held of a header or a payload's start.
    pub fn buffered(&self) -> usize {
        self.header.len() + self.kept.len()
    }

    /// Between messages, with nothing held.
    pub fn is_idle(&self) -> bool {
        !self.in_message && self.header.is_empty()
    }

    /// Framing is given up, counted once.
    pub fn lose(&mut self) {
        if !self.lost {
            self.losses += 1;
        }
        self.lost = true;
        self.header.clear();
        self.kept.clear();
        self.in_message = false;
    }

    /// Feeds `len` bytes, `data` of them captured. `done` gets each message's end with
    /// its kept bytes, and takes them, or leaves them to be continued by the next
    /// message (MySQL's packets of 16 MiB).
    pub fn feed(&mut self, data: &[u8], len: u64, mut done: impl FnMut(&mut H, &mut Vec<u8>)) {
        if self.lost {
            return;
        }
        let mut i = 0;
        while i < data.len() {
            if !self.in_message {
                let want = self.head.size();
                let take = (want - self.header.len()).min(data.len() - i);
                self.header.extend_from_slice(&data[i..i + take]);
                i += take;
                if self.header.len() < want {
                    break;
                }
                let Some(length) = self.head.payload_length(&self.header) else {
                    self.lose();
                    return;
                };
                self.header.clear();
                self.left = length;
                self.in_message = true;
            }
            let take = usize::try_from(self.left).unwrap_or(usize::MAX).min(data.len() - i);
            let room = MAX_KEPT.saturating_sub(self.kept.len()).min(take);
            self.kept.extend_from_slice(&data[i..i + room]);
            self.left -= take as u64;
            i += take;
            if self.left == 0 {
                self.in_message = false;
                done(&mut self.head, &mut self.kept);
            }
        }
        let uncaptured = len.saturating_sub(data.len() as u64);
        if uncaptured == 0 {
            return;
        }
        if self.in_message && self.left >= uncaptured {
            self.left -= uncaptured;
            if self.left == 0 {
                self.in_message = false;
                done(&mut self.head, &mut self.kept);
            }
        } else {
            self.lose();
        }
    }
}
