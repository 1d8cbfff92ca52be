//! TCP session states for NAT and security-group conntrack (RFC 7857 §2 / RFC 6146 §3.5.2).
//!
//! Only what the timeouts need is tracked: whether a session is opening, established,
//! half-closed, closing or reset. Sequence numbers are not checked (the endpoints do that).

/// Stored in `Ct4::state` (and the IPv6 conntrack) as a `u8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// No packet seen yet (a fresh entry).
    None = 0,
    /// SYN seen from the inside only (RFC 6146 "V6 INIT"): opening.
    SynOut = 1,
    /// SYN seen from the outside only ("V4 INIT", simultaneous open or EIF inbound): opening.
    SynIn = 2,
    Established = 3,
    /// FIN from the inside; the other half is still open ("V6 FIN RCV").
    FinOut = 4,
    /// FIN from the outside ("V4 FIN RCV").
    FinIn = 5,
    /// FIN both ways ("V4 FIN + V6 FIN RCV"): closing.
    FinBoth = 6,
    /// RST seen ("TRANS"): kept for the transitory timeout so late packets still translate
    /// (RFC 7857 §2.2); any later non-RST packet revives the session.
    Rst = 7,
}

impl TcpState {
    pub const fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynOut,
            2 => TcpState::SynIn,
            3 => TcpState::Established,
            4 => TcpState::FinOut,
            5 => TcpState::FinIn,
            6 => TcpState::FinBoth,
            7 => TcpState::Rst,
            _ => TcpState::None,
        }
    }

    /// Whether the long (established) idle timeout applies. Half-closed sessions keep it, as in
    /// RFC 6146: one side may still stream data for hours.
    pub const fn is_long_lived(self) -> bool {
        matches!(
            self,
            TcpState::Established | TcpState::FinOut | TcpState::FinIn
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            TcpState::None => "none",
            TcpState::SynOut => "syn_out",
            TcpState::SynIn => "syn_in",
            TcpState::Established => "established",
            TcpState::FinOut => "fin_out",
            TcpState::FinIn => "fin_in",
            TcpState::FinBoth => "fin_both",
            TcpState::Rst => "rst",
        }
    }
}

/// TCP header flag bits (byte 13 of the header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Which way a packet travels relative to the inside (the pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Out,
    In,
}

/// The state after a packet with TCP flags `f` travelling in `dir`.
#[inline(always)]
pub const fn next(state: TcpState, dir: Dir, f: u8) -> TcpState {
    use TcpState::*;
    let syn = f & flags::SYN != 0;
    let fin = f & flags::FIN != 0;
    if f & flags::RST != 0 {
        return Rst;
    }
    let out = matches!(dir, Dir::Out);
    match state {
        // A session first seen mid-stream (no SYN) is treated as opening until the other side
        // answers, so a stray packet never earns the two-hour timeout on its own.
        None => {
            if out {
                SynOut
            } else {
                SynIn
            }
        }
        SynOut => {
            if !out && (syn || f & flags::ACK != 0) {
                Established
            } else {
                SynOut
            }
        }
        SynIn => {
            if out && (syn || f & flags::ACK != 0) {
                Established
            } else {
                SynIn
            }
        }
        Established => {
            if fin {
                if out { FinOut } else { FinIn }
            } else {
                Established
            }
        }
        FinOut => {
            if fin && !out {
                FinBoth
            } else {
                FinOut
            }
        }
        FinIn => {
            if fin && out {
                FinBoth
            } else {
                FinIn
            }
        }
        FinBoth => {
            // A new SYN on the same 4-tuple after both FINs: the tuple is being reused.
            if syn && f & flags::ACK == 0 {
                if out { SynOut } else { SynIn }
            } else {
                FinBoth
            }
        }
        Rst => {
            if syn && f & flags::ACK == 0 {
                if out { SynOut } else { SynIn }
            } else {
                // RFC 6146 TRANS: any non-RST traffic means the session lives on.
                let _ = fin;
                Established
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dir::*, TcpState::*, flags::*, *};
    use proptest::prelude::*;

    fn run(seq: &[(Dir, u8)]) -> TcpState {
        seq.iter().fold(None, |s, &(d, f)| next(s, d, f))
    }

    #[test]
    fn three_way_handshake_and_close() {
        assert_eq!(run(&[(Out, SYN)]), SynOut);
        assert_eq!(run(&[(Out, SYN), (In, SYN | ACK)]), Established);
        assert_eq!(run(&[(Out, SYN), (In, SYN | ACK), (Out, ACK)]), Established);
        let est = [(Out, SYN), (In, SYN | ACK), (Out, ACK)];
        let mut s = run(&est);
        s = next(s, Out, FIN | ACK);
        assert_eq!(s, FinOut);
        assert!(s.is_long_lived());
        s = next(s, In, ACK);
        assert_eq!(s, FinOut);
        s = next(s, In, FIN | ACK);
        assert_eq!(s, FinBoth);
        assert!(!s.is_long_lived());
    }

    #[test]
    fn simultaneous_open() {
        // RFC 5382 REQ-2a: SYN out, SYN in (crossing), then SYN-ACKs.
        assert_eq!(run(&[(Out, SYN), (In, SYN)]), Established);
        assert_eq!(run(&[(In, SYN), (Out, SYN)]), Established);
    }

    #[test]
    fn rst_is_transitory_then_revivable() {
        let s = run(&[(Out, SYN), (In, SYN | ACK), (In, RST)]);
        assert_eq!(s, Rst);
        assert!(!s.is_long_lived());
        assert_eq!(next(s, Out, ACK), Established);
        assert_eq!(next(s, Out, SYN), SynOut);
    }

    #[test]
    fn stray_packet_never_established_alone() {
        assert_eq!(run(&[(Out, ACK)]), SynOut);
        assert_eq!(run(&[(Out, ACK), (Out, ACK)]), SynOut);
        assert_eq!(run(&[(In, ACK), (In, ACK)]), SynIn);
        // A flow picked up mid-stream (state lost) is established once both sides spoke.
        assert_eq!(run(&[(Out, ACK), (In, ACK)]), Established);
        assert_eq!(run(&[(In, ACK), (Out, ACK)]), Established);
    }

    proptest! {
        /// Whatever happens, an RST always lands in Rst and from_u8 round-trips every state.
        #[test]
        fn rst_always_wins(seq in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..20)) {
            let seq: Vec<(Dir, u8)> = seq.into_iter().map(|(o, f)| (if o { Out } else { In }, f)).collect();
            let s = run(&seq);
            prop_assert_eq!(TcpState::from_u8(s as u8), s);
            prop_assert_eq!(next(s, Out, RST | ACK), Rst);
            prop_assert_eq!(next(s, In, RST), Rst);
        }
    }
}
