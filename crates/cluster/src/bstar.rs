//! Binary Star (the ZeroMQ guide, chapter 4): a primary broker and a backup, of which
//! exactly one serves. A pure state machine: peer states and client requests go in, with
//! the time passed as an argument; whether to serve, and state changes, come out. The
//! broker shell (`broker.rs`) carries the peer states over its sockets.
//!
//! The guide's rules, kept:
//! - Each broker tells its peer its state every heartbeat; a peer silent for `expiry`
//!   (two heartbeats and more) is presumed dead.
//! - A primary and a backup start in their own states; the primary becomes active when it
//!   hears the backup, the backup passive when it hears the primary active.
//! - The backup becomes active only when it has lost its peer **and a client turns to
//!   it**: a client that still reaches the primary keeps the backup passive, which is
//!   the guide's defence against split brain when only the link between the brokers
//!   fails. A passive broker drops what clients send; they time out and try the next
//!   address.
//! - A backup that has never seen its primary serves no one.
//!
//! And three additions, each for a case the guide answers by aborting both brokers:
//! - A broker that starts as primary serves only once it has heard its peer or `expiry`
//!   has passed, so a primary restarted while its backup is active hears that first and
//!   goes passive, instead of serving beside it.
//! - Every move to active takes a term one higher than any it has seen. Two actives
//!   (one was frozen, or the link between them was cut) resolve at the first state they
//!   exchange: the lower term (on a tie, the backup) becomes passive. Its clients time out
//!   and come to the other.
//! - Two passives (which no sequence in the tests produces; kept as a guard): the
//!   primary becomes active.

use std::time::{Duration, Instant};

/// Which of the pair a broker was started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

/// The guide's four states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started as primary, has not decided yet.
    Primary,
    /// Started as backup, has not decided yet.
    Backup,
    /// Serving clients.
    Active,
    /// Standing by: drops what clients send unless the peer has been silent `expiry`.
    Passive,
}

impl State {
    pub fn code(self) -> u8 {
        match self {
            State::Primary => 1,
            State::Backup => 2,
            State::Active => 3,
            State::Passive => 4,
        }
    }

    pub fn from_code(c: u8) -> Option<State> {
        Some(match c {
            1 => State::Primary,
            2 => State::Backup,
            3 => State::Active,
            4 => State::Passive,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Primary => "primary (deciding)",
            State::Backup => "backup (deciding)",
            State::Active => "active",
            State::Passive => "passive",
        }
    }
}

/// What an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Now serving (the reason, for the log).
    Active(&'static str),
    /// Now standing by: whatever it held is dropped (its clients resubmit to the other).
    Passive(&'static str),
    /// The pair is misconfigured (two primaries, two backups): serve nothing, exit.
    Fatal(&'static str),
}

#[derive(Debug, Clone)]
pub struct Bstar {
    role: Role,
    state: State,
    term: u64,
    /// The highest term heard from the peer.
    peer_term: u64,
    expiry: Duration,
    started: Instant,
    peer_seen: Option<Instant>,
}

impl Bstar {
    pub fn new(role: Role, expiry: Duration, now: Instant) -> Bstar {
        let state = match role {
            Role::Primary => State::Primary,
            Role::Backup => State::Backup,
        };
        Bstar { role, state, term: 0, peer_term: 0, expiry, started: now, peer_seen: None }
    }

    /// A broker that has served alone until a backup found it: the active primary.
    pub fn serving(role: Role, expiry: Duration, now: Instant) -> Bstar {
        Bstar { state: State::Active, term: 1, ..Bstar::new(role, expiry, now) }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    fn activate(&mut self, why: &'static str) -> Change {
        self.state = State::Active;
        self.term = self.term.max(self.peer_term) + 1;
        Change::Active(why)
    }

    fn peer_expired(&self, now: Instant) -> bool {
        self.peer_seen.is_none_or(|t| now.saturating_duration_since(t) >= self.expiry)
    }

    /// The peer's state, as it told it.
    pub fn on_peer(&mut self, peer: State, peer_term: u64, now: Instant) -> Change {
        self.peer_seen = Some(now);
        self.peer_term = self.peer_term.max(peer_term);
        use State::*;
        match (self.state, peer) {
            (Primary, Primary) => Change::Fatal("the peer was started as a primary too"),
            (Backup, Backup) => Change::Fatal("the peer was started as a backup too"),
            (Primary, Backup) => self.activate("the backup is up"),
            // A passive peer of a broker that is starting: the peer turns active on
            // hearing it, and it goes passive on hearing that (a restarted broker never
            // takes over from a live peer in one step).
            (Primary, Passive) | (Backup, Passive) => Change::None,
            (Primary, Active) | (Backup, Active) => {
                self.state = Passive;
                Change::Passive("the peer is active")
            }
            (Backup, Primary) => Change::None, // it becomes active on hearing us
            (Passive, Primary) | (Passive, Backup) => self.activate("the peer restarted"),
            (Passive, Passive) if self.role == Role::Primary => self.activate("both were passive"),
            (Passive, Passive) | (Passive, Active) => Change::None,
            (Active, Active) => {
                let yield_to_peer = peer_term > self.term || (peer_term == self.term && self.role == Role::Backup);
                if yield_to_peer {
                    self.state = Passive;
                    Change::Passive("two were active; the peer's term is newer")
                } else {
                    Change::None
                }
            }
            (Active, _) => Change::None,
        }
    }

    /// A client's request: whether to serve it.
    pub fn on_client(&mut self, now: Instant) -> (bool, Change) {
        match self.state {
            State::Active => (true, Change::None),
            State::Primary => {
                if now.saturating_duration_since(self.started) >= self.expiry {
                    (true, self.activate("no peer heard since starting"))
                } else {
                    (false, Change::None)
                }
            }
            State::Backup => (false, Change::None),
            State::Passive => {
                if self.peer_expired(now) {
                    (true, self.activate("the peer is silent and a client turned here"))
                } else {
                    (false, Change::None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coord::sim::Rng;

    const H: u64 = 100; // heartbeat, ms
    const EXPIRY: u64 = 3 * H;

    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn at(ms: u64) -> Instant {
        t0() + Duration::from_millis(ms)
    }

    #[test]
    fn the_guides_happy_path() {
        let mut p = Bstar::new(Role::Primary, Duration::from_millis(EXPIRY), at(0));
        let mut b = Bstar::new(Role::Backup, Duration::from_millis(EXPIRY), at(0));
        assert_eq!(b.on_client(at(10)), (false, Change::None), "a backup alone serves no one");
        assert_eq!(p.on_client(at(10)), (false, Change::None), "a primary waits to hear its peer");
        assert!(matches!(p.on_peer(State::Backup, 0, at(20)), Change::Active(_)));
        assert!(matches!(b.on_peer(State::Active, p.term(), at(30)), Change::Passive(_)));
        assert!(p.on_client(at(40)).0);
        assert!(!b.on_client(at(40)).0, "the primary is alive");
        // The primary dies: the backup serves only once it is silent and a client comes.
        assert!(!b.on_client(at(30 + EXPIRY - 1)).0);
        let (serve, change) = b.on_client(at(30 + EXPIRY));
        assert!(serve && matches!(change, Change::Active(_)));
        assert!(b.term() > p.term());
        // The primary restarts: it hears the active backup before its grace ends.
        let mut p = Bstar::new(Role::Primary, Duration::from_millis(EXPIRY), at(1000));
        assert!(matches!(p.on_peer(State::Active, b.term(), at(1100)), Change::Passive(_)));
        assert!(!p.on_client(at(1200)).0);
    }

    #[test]
    fn misconfigured_pairs_are_fatal() {
        let mut a = Bstar::new(Role::Primary, Duration::from_millis(EXPIRY), at(0));
        assert!(matches!(a.on_peer(State::Primary, 0, at(1)), Change::Fatal(_)));
        let mut b = Bstar::new(Role::Backup, Duration::from_millis(EXPIRY), at(0));
        assert!(matches!(b.on_peer(State::Backup, 0, at(1)), Change::Fatal(_)));
    }

    /// One broker of the simulated pair.
    struct Node {
        fsm: Option<Bstar>,
        role: Role,
        /// Frozen until this time (SIGSTOP): it neither hears nor says anything.
        frozen_until: u64,
        next_beat: u64,
    }

    /// Two brokers, each telling its state to the other every `H` over a link delaying
    /// each message by up to `max_delay` (and dropping some); clients turning to either at
    /// random; kills, restarts and (optionally) freezes and cuts of the link between them.
    /// Checks after every millisecond:
    /// - without freezes and cuts, never two brokers serving a client within the same
    ///   `H` (two actives would both serve);
    /// - with them (and a link that delays past the expiry and drops), two actives
    ///   happen, and resolve within `10 H` of running side by side;
    /// - a broker alive alone for `EXPIRY`, that has once been active or passive (or
    ///   started as primary), serves the next client.
    ///
    /// Returns how many split brains were resolved and survivors served.
    fn run(seed: u64, faults: bool) -> (u32, u32) {
        let mut rng = Rng::new(seed);
        let expiry = Duration::from_millis(EXPIRY);
        let mut nodes = [Role::Primary, Role::Backup].map(|role| Node {
            fsm: Some(Bstar::new(role, expiry, at(0))),
            role,
            frozen_until: 0,
            next_beat: 0,
        });
        let max_delay = if faults { 2 * H } else { H / 2 };
        // (deliver at, to, state, term)
        let mut wire: Vec<(u64, usize, State, u64)> = Vec::new();
        let mut cut_until = 0u64;
        let mut last_served: [Option<u64>; 2] = [None; 2];
        // Since when both have been running and active (a split brain to resolve).
        let mut dual_since: Option<u64> = None;
        // When each was last killed or restarted.
        let mut changed = [0u64; 2];
        // When each last heard its peer (late messages arrive after a kill).
        let mut heard = [0u64; 2];
        let (mut dual_episodes, mut survivors_served) = (0u32, 0u32);
        for now in 0..20_000u64 {
            // Faults.
            if rng.chance(0.0005) {
                let i = rng.pick(2) as usize;
                changed[i] = now;
                if nodes[i].fsm.is_some() {
                    nodes[i].fsm = None; // killed
                } else {
                    nodes[i].fsm = Some(Bstar::new(nodes[i].role, expiry, at(now)));
                }
            }
            if faults && rng.chance(0.0003) {
                let i = rng.pick(2) as usize;
                nodes[i].frozen_until = now + rng.range(EXPIRY, 4 * EXPIRY);
            }
            if faults && rng.chance(0.0003) {
                cut_until = now + rng.range(H, 4 * EXPIRY);
            }
            // Messages.
            let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|m| m.0 <= now);
            wire = later;
            for (_, to, state, term) in due {
                let n = &mut nodes[to];
                if n.frozen_until > now {
                    wire.push((n.frozen_until, to, state, term)); // read once it thaws
                    continue;
                }
                if let Some(f) = n.fsm.as_mut() {
                    let c = f.on_peer(state, term, at(now));
                    heard[to] = now;
                    assert!(!matches!(c, Change::Fatal(_)), "seed {seed}: {c:?}");
                }
            }
            for (i, n) in nodes.iter_mut().enumerate() {
                if n.frozen_until > now || now < n.next_beat {
                    continue;
                }
                n.next_beat = now + H;
                if let Some(f) = &n.fsm {
                    if now >= cut_until && !(faults && rng.chance(0.05)) {
                        wire.push((now + rng.range(1, max_delay), 1 - i, f.state(), f.term()));
                    }
                }
            }
            // A client turns to one of them.
            if rng.chance(0.05) {
                let i = rng.pick(2) as usize;
                if nodes[i].frozen_until <= now {
                    if let Some(f) = nodes[i].fsm.as_mut() {
                        let state = f.state();
                        let served = f.on_client(at(now)).0;
                        if served {
                            last_served[i] = Some(now);
                        }
                        // Liveness: alone long enough, it serves (unless it is a backup
                        // that never saw its primary).
                        let alone = nodes[1 - i].fsm.is_none() && now - changed[1 - i] > EXPIRY + max_delay;
                        let settled = now - changed[i] > EXPIRY && now - heard[i] >= EXPIRY;
                        if alone && settled && state != State::Backup {
                            assert!(served, "seed {seed}: {state:?} alone at {now} does not serve");
                            survivors_served += 1;
                        }
                    }
                }
            }
            // Safety.
            let serving = |i: usize| last_served[i].is_some_and(|t| now - t < H && nodes[i].fsm.is_some());
            if !faults {
                assert!(!(serving(0) && serving(1)), "seed {seed}: both served within {H} ms at {now}");
            }
            let both_running =
                (0..2).all(|i| nodes[i].fsm.is_some() && nodes[i].frozen_until <= now) && now >= cut_until;
            let both_active = nodes.iter().all(|n| n.fsm.as_ref().is_some_and(|f| f.state() == State::Active));
            if both_running && both_active {
                let since = *dual_since.get_or_insert_with(|| {
                    dual_episodes += 1;
                    now
                });
                assert!(now - since < 10 * H, "seed {seed}: two actives since {since}, still at {now}");
            } else {
                dual_since = None;
            }
        }
        (dual_episodes, survivors_served)
    }

    #[test]
    fn never_two_serving_on_a_timely_link() {
        let survivors: u32 = (0..200).map(|seed| run(seed, false).1).sum();
        assert!(survivors > 100, "the runs kill brokers and clients find the survivor ({survivors})");
    }

    #[test]
    fn two_actives_resolve_after_freezes_and_cuts() {
        let splits: u32 = (0..200).map(|seed| run(seed, true).0).sum();
        assert!(splits > 20, "freezes and cuts make two actives, which resolve ({splits})");
    }

    /// A pair alone: whichever broker outlives the other, and has been active or
    /// passive, serves the next client after `EXPIRY`.
    #[test]
    fn the_survivor_serves() {
        let e = Duration::from_millis(EXPIRY);
        for (first_dies, survivor_state) in [(0usize, State::Passive), (1, State::Active)] {
            let mut p = Bstar::new(Role::Primary, e, at(0));
            let mut b = Bstar::new(Role::Backup, e, at(0));
            p.on_peer(State::Backup, 0, at(1));
            b.on_peer(State::Active, p.term(), at(2));
            let survivor = if first_dies == 0 { &mut b } else { &mut p };
            assert_eq!(survivor.state(), survivor_state);
            assert!(survivor.on_client(at(2 + EXPIRY)).0);
        }
    }
}
