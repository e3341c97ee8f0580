//! # The floodgate guide
//!
//! Background for using floodgate well. Nothing here is code; it explains the choices the
//! code makes and what you can rely on.
//!
//! ## The token bucket, stored as one timestamp
//!
//! A [`Limit`](crate::Limit) of `count` per `period` with burst `B` is a token bucket: it
//! holds at most `B` tokens, gains one every `T = period / count` (the *emission interval*)
//! and each request of cost `c` takes `c` tokens or is denied. Legitimate bursts of up to `B`
//! pass at once; over any window of length Δ no more than `B + ⌊Δ/T⌋` is admitted, so the
//! long-run average is capped at the stated rate. A fixed-window counter, by contrast, lets
//! a client send its whole quota at the end of one window and again at the start of the
//! next: twice the rate.
//!
//! floodgate does not store `(tokens, last refill)`. It stores one integer per limit, the
//! *theoretical arrival time* (TAT) of the generic cell rate algorithm (GCRA): the time at
//! which the bucket would be full again. With tolerance `τ = B·T`, a request of cost `c` at
//! time `now` computes `tat' = max(tat, now) + c·T` and is allowed iff `tat' − now ≤ τ`;
//! only then is `tat'` stored. `remaining = ⌊(τ − (tat − now)) / T⌋`, and a denial's
//! `retry_after = tat' − now − τ` is exact: one time unit earlier the same request is
//! denied, at it admitted. The two formulations make identical decisions (the test suite
//! checks floodgate against a plain token-bucket model over random histories), but the
//! TAT is one word, integer, and free to garbage-collect: **a TAT at or before now is a
//! full bucket, identical to no state at all**, so such entries can be dropped at any time
//! without changing any decision.
//!
//! ## Exactness and rounding
//!
//! Time is integer: nanoseconds in the memory store. `T` is rounded *up* to a whole unit, so
//! a store never admits more than the stated rate; a limit whose rounding would cost more
//! than 1% of its rate (above about 10 million per second) is rejected when its policy is
//! built, so everything accepted admits at least 99% of its nominal bound under saturating
//! demand. `B·T` is capped at 2^50 µs (about 35 years), which keeps every value far from
//! overflow. Arithmetic saturates rather than wraps, so no input makes floodgate panic.
//!
//! A request whose cost exceeds a limit's burst can never pass: floodgate answers
//! [`Error::CostExceedsBurst`](crate::Error::CostExceedsBurst) instead of a wait that would
//! never end. `charge` (costs known after the fact) may push a bucket into debt, capped at one
//! burst below empty, so a key's state is never more than `2·B·T` from full.
//!
//! ## Policies: several limits, all or nothing
//!
//! A [`Policy`](crate::Policy) checks every limit and charges all or none: a request denied
//! by the daily cap does not use up the per-second budget. The decision reports the limit
//! that decided — for a denial the one with the longest wait, for an allowance the one with
//! the fewest tokens left, ties to the lowest index — and `reset_after` until every limit is
//! full. State is keyed by the policy's *name*, the limit's position and your key. Changing a
//! policy's rates under the same name keeps the stored TATs and reads them with the new
//! rates: a key that was throttled stays throttled for at most its old debt.
//!
//! ## Clocks
//!
//! The default [`MonotonicClock`](crate::MonotonicClock) reads the CPU's time-stamp counter
//! where it is reliable (via `quanta`, about 10 ns a read), the OS monotonic clock
//! elsewhere. A clock that steps backwards never makes floodgate admit more: decisions are
//! computed against `max(tat, now)`, so a backward step of δ lengthens an existing denial by
//! at most δ. [`ManualClock`](crate::ManualClock) moves only when told to, and its
//! `advance`/`set` wake `until_ready` waiters whose time has come: tests never sleep.
//!
//! ## The memory store
//!
//! [`MemoryStore`](crate::MemoryStore) splits keys over up to 64 shards. Each shard is an
//! open-addressing table of 16-byte slots — a 64-bit fingerprint and the TAT — behind a
//! spin lock held for a probe and a few integer operations (one atomic read-modify-write to
//! enter, a plain store to leave). No key is stored, no `String` is built to look one up,
//! and nothing is allocated per decision. All limits of one key live in the same shard, so a
//! multi-limit policy is all-or-nothing under one lock. A table has any number of slots: a
//! fingerprint's home slot is its low 32 bits scaled to the table's size (the shard comes
//! from its top bits), so tables grow by 4/3 and stay between 9/16 and 3/4 full — 21 to 28
//! bytes a stored key, where doubling tables would swing between 18 and 37.
//!
//! **Fingerprints and collisions.** The fingerprint is a 64-bit hash of `(policy name,
//! key)` — remixed per limit — computed with aHash under random keys drawn when the store is
//! created. Two different keys share a bucket only if their fingerprints are equal. For `n`
//! keys stored at once the chance of any such pair is about `n² / 2^65`: one in 37 million
//! with a million keys, one in 370 000 with ten million — and the consequence is two keys
//! sharing one bucket, never a crash or an unbounded admission.
//!
//! **What an attacker who chooses keys can do.** Because the hash keys are random per
//! process and never revealed, an attacker cannot compute fingerprints offline: they cannot
//! make keys collide with a victim's (to share its bucket), nor pile keys into one shard or
//! one probe sequence (HashDoS). What they *can* do is send many distinct keys. That costs
//! them nothing per key, so the store bounds memory by itself:
//!
//! - a bucket that has been full for a second is dropped whenever its shard needs room
//!   (it is identical to an absent key), and tables grow only when that frees too little;
//! - at the cap ([`max_keys`](crate::MemoryStoreBuilder::max_keys), which counts stored
//!   limit states; each shard enforces its share) the entries **nearest to full** are
//!   evicted first, in batches of an eighth of the shard. An evicted key regains at most its
//!   outstanding debt, and a deeply throttled key is evicted only after every less-indebted
//!   key of its shard — a flood of fresh keys, each one request deep, cannot free it.
//!
//! [`sweep`](crate::MemoryStore::sweep) drops every full bucket at once and shrinks mostly
//! empty tables, for returning memory after a burst of keys; it is never needed for
//! correctness. A dropped bucket is read back as "full since the sweep", so even a clock
//! stepping back after a sweep cannot make a dropped key more generous than it was.
//!
//! ## Waiting for capacity
//!
//! [`until_ready`](crate::RateLimiter::until_ready) checks, and on a denial sleeps for
//! exactly `retry_after` on the store's clock and checks again. Nothing is charged while it
//! waits, so dropping the future (a timeout, a cancelled job) costs nothing.
//! [`until_ready_timeout`](crate::RateLimiter::until_ready_timeout) fails at once with
//! [`Error::Timeout`](crate::Error::Timeout) when the next wait would end after the timeout.
//! Inside a tokio runtime the default clock sleeps on tokio's timer; elsewhere on one shared
//! timer thread, so any executor works.
//!
//! ## Choosing a store
//!
//! Use the memory store when one process sees all the traffic it limits (one instance, or
//! per-instance limits you size accordingly). Limits shared by many instances need a shared
//! store; any type implementing [`Store`](crate::Store) plugs into
//! [`RateLimiter::new`](crate::RateLimiter::new), and the `floodgate-testkit` conformance
//! suite states exactly what a store must do. A store implements one decision method,
//! [`apply`](crate::Store::apply) with a [`store::Op`](crate::store::Op), plus `reset` and
//! `clock`; costs reach it already validated by the facade.
//!
//! ## The Redis store across nodes: batching, leasing, failover
//!
//! The Redis store (crate `floodgate-redis`) makes three claims beyond one atomic script
//! per decision; each rests on an argument short enough to state here.
//!
//! **Exact batching changes nothing.** A batch is one script call, so Redis runs it
//! atomically, with one time `now` for the whole call. The batch script reads each key once
//! and then decides its items in order against the values as decided so far — the state
//! a sequence of single calls at the same `now` would see, since each single call reads
//! what the previous one wrote. Each item's arithmetic is the single script's, line for
//! line, so item `i` gets the reply call `i` would have got. At the end each changed key is
//! written once, with its final value and the TTL of that value (`ceil((TAT − now)/1 ms)`),
//! which is what the last single call touching it would have written, since all of them
//! share `now`. Validation comes before any write, so a failing item leaves the state as a
//! failing single call does: unchanged. The property test in `floodgate-redis`'s `store`
//! suite checks all of it — replies, stored values and TTLs — against single calls. Two
//! batches may be in flight on one connection (a long queue is sent as two halves at once):
//! Redis runs a connection's calls in the order they arrive, the second at a `now` no
//! earlier than the first's, so the two are a sequence of single calls too. Concurrency
//! permits are batched the same way by the permit script (see "Concurrency limits").
//!
//! **Leasing costs at most `r·L`.** A lease of `k` tokens is, to the shared bucket, one
//! admission of cost `k` at Redis time `g`, so the grants of any window of length `w` total
//! at most `B + ⌊r·w⌋` (the token bucket's own bound, which every single decision is part
//! of too). The node spends a leased token at a time `s` after the reply came back, so
//! `s ≥ g`, and before `sent + L`, where `sent` is when the node sent the request, so
//! `sent ≤ g` and `s < g + L`. Hence every token spent in `[a, a + Δ]` was granted in
//! `(a − L, a + Δ]`, a window of length `Δ + L`, and at most `B + ⌊r·(Δ + L)⌋` are admitted
//! in any window of length Δ. Two assumptions: this node's clock runs at Redis's rate over
//! `L` (one host: the same clock; across hosts, drift is parts per million of `L`), and
//! unspent tokens are not returned — they expire. (Returning them by moving the TAT back
//! lets a node hold `r·L` more each round after another node drained the refilled bucket,
//! without limit.) A `reset` deletes the key's state while other nodes may still hold
//! leases, granted in the window before it; the bucket restarts full, so across a reset a
//! window admits at most `2B + ⌊r·(Δ + L)⌋` — as across a Redis restart.
//!
//! **A failover costs at most a burst, plus what refills while the store still writes to
//! the old master.** Say the replica is promoted at time `p` and the store stops writing to
//! the old master at `p + W`. Each key then has two buckets: the old master's, written up to
//! `p + W`, and the new master's, written from `p` on, starting from whatever replication
//! had shipped (possibly an older, fuller state). Each is a token bucket of its own, so
//! within any window it admits at most `B + ⌊r·d⌋`, `d` being how much of the window it
//! was written in. A window of length Δ overlaps the old master's time by `d₁` and the new
//! master's by `d₂`, with `d₁ + d₂ ≤ Δ + W` (the two overlap at most during `[p, p + W]`).
//! So a window admits at most `2B + ⌊r·d₁⌋ + ⌊r·d₂⌋ ≤ 2B + ⌊r·(Δ + W)⌋`, whatever
//! replication lost. Behind Sentinel, `W` ends when the store hears `+switch-master` (or
//! at its once-a-second check, or at a `READONLY`); the Sentinel test measures it.
//!
//! ## The server's connection bounds
//!
//! The `floodgate` server (crate `floodgate-server`) states three bounds on connections; each
//! follows from how its accept loops are built.
//!
//! - **A silent gRPC connection lives at most `grpc_handshake_timeout` after it is
//!   accepted.** Before a connection reaches the HTTP/2 engine, its task reads the 24-byte
//!   client preface and the first frame header (and a `SETTINGS` payload of at most 16 KiB)
//!   under one timer started at accept; when the timer fires the task returns and the socket
//!   is dropped. Nothing else runs on that connection before the timer is armed, so no client
//!   behaviour can extend it. (A connection still waiting in the kernel's backlog — the
//!   listener is at `grpc_max_connections`, or out of file descriptors — is not yet
//!   accepted; it is accepted when a slot frees, which each closed silent connection does,
//!   so a backlog of silent connections drains in at most ⌈n / slots⌉ handshake periods.)
//! - **Shutdown takes at most `shutdown_grace` plus the time to cut.** On the stop signal
//!   each listener stops accepting, asks every connection to finish (HTTP/1.1: no more
//!   keep-alive; HTTP/2: `GOAWAY`; a connection still in its handshake: closed at once), and
//!   waits for the connection tasks under one `shutdown_grace` timer; when it fires, every
//!   remaining task is aborted, which drops its socket. Aborting does not wait on the peer,
//!   so the exit follows without any further client-controlled delay.
//! - **The body cap is exact.** Each data frame's length is added to the bytes held so far
//!   (the first frame, or the joined buffer once a second frame arrives — never both), and a
//!   frame that takes the total past 65 536 bytes fails the request with `413`; a declared
//!   `Content-Length` over the cap fails it before reading. So the accepted bodies are
//!   exactly those of at most 65 536 bytes, whatever the framing.
//!
//! ## Login protection
//!
//! [`LoginGuard`](crate::login::LoginGuard) (feature `login`) is built from token buckets
//! only, so it runs on any store; these are the rules it states, and why they hold. `T` is a
//! limit's emission interval, and a bucket is one timestamp, the TAT (see the first section).
//!
//! - **`k` failures of a pair within the strike window `W` always lock it** (`k` =
//!   `strikes`). The strikes bucket has burst `k − 1` and refills one token per `W`. Let the
//!   failures come at `t₁ ≤ … ≤ t_k` with `t_k − t₁ < W`, none of them locking before. At
//!   `t₁` the bucket holds at most `k − 1` tokens; the first `k − 1` failures take one
//!   each; between `t₁` and `t_k` less than `(t_k − t₁)/W < 1` token is added. So at `t_k`
//!   less than one token is left and the `k`-th failure is refused: the pair is locked. The
//!   bucket also locks a pair that keeps failing faster than once per `W` on average, even
//!   with fewer than `k` in any one window; failures one per `W` or slower never lock (for
//!   `k ≥ 2`: each takes a token and one is back before the next; with `k = 1` every failure
//!   locks).
//! - **A lockout of length `d` ends exactly `d` after it began.** The lock bucket holds
//!   `C` one-millisecond tokens, `C` the longest lockout. Locking resets it (TAT = now `t`)
//!   and charges `C + d − 1` tokens, so TAT = `t + (C + d − 1)·1 ms`; since `d ≤ C` this is
//!   within the one burst of debt a charge may leave, so nothing is capped. A one-token peek
//!   passes at `s` iff `TAT − s ≤ (C − 1)·1 ms`, i.e. iff `s ≥ t + d`, and a denied peek's
//!   `retry_after` is exactly `t + d − s`. Peeks consume nothing, so probing a locked pair
//!   never extends its lockout.
//! - **The ladder climbs one length per lockout, caps at the last, and comes down one per
//!   `forget_after` since the last lockout.** With lengths `d₀ … d_{n−1}` the levels bucket
//!   has burst `n − 1` and refills one token per `forget_after` (`F`). After a lockout that
//!   leaves the ladder at step `p` the bucket is reset and charged `p` tokens, so at `s`
//!   it holds `n − 1 − p + ⌊(s − t)/F⌋` whole tokens (capped at `n − 1`), and the next
//!   lockout's step, `n − 1 − remaining`, is `max(0, p − ⌊(s − t)/F⌋)`. A lockout at step
//!   `q` leaves the ladder at `min(q + 1, n − 1)`.
//! - **Parallel guesses for one pair are bounded by the per-pair burst.** `attempt` charges
//!   the per-pair bucket before it answers, with the store's atomic check-and-consume: of
//!   any number of concurrent attempts for a pair, at most its burst (plus the refill while
//!   they run) are allowed, however long the password checks take before a failure is
//!   recorded.
//! - **The known-device exemption lasts exactly `known_device_for` from the last success.**
//!   The known bucket (burst 1, one token per `K`) is reset and charged one token at each
//!   success: TAT = `t + K`; a peek is refused — the device is known — iff `s < t + K`.
//!
//! Each attempt checks, in order: the lockout, the per-IP, the per-pair, and (unless the
//! device is known) the per-username limit, stopping at the first refusal; the buckets
//! checked before it have been charged, which is what a refused attempt should cost. The
//! steps are separate store calls: two nodes recording failures of one pair at the same
//! instant may both lock it, never neither; their two charges can then stack, so that
//! lockout lasts at least its length and at most the longest length plus 1 ms (the charge
//! cap of one burst of debt). The test kit's `login` cases check every rule above on the memory store
//! and on Redis.
//!
//! ## Concurrency limits
//!
//! A [`Concurrency`](crate::Concurrency) limit caps the permits *in flight* per key: a
//! fragile database is overwhelmed by twenty slow queries at once, whatever their rate. The
//! store keeps, per `(limit, key)`, the set of permit ids in flight, each with the end of its
//! lease on the store's clock (the memory store: its clock, under one shard lock; Redis: a
//! sorted set scored by lease end on Redis's `TIME`, changed only by the permit script,
//! which applies each operation atomically — with batching, the operations of one call in
//! order at the call's one time, each as if sent alone). Every operation first drops the
//! entries whose end is at or before now; an
//! acquire then adds its id only if fewer than `max` entries remain (an id already present
//! is renewed instead); a release removes its id; a renew moves an existing id's end to
//! `now + L` and fails with [`Error::PermitExpired`](crate::Error::PermitExpired) when the id
//! is gone. Each operation is atomic per key, so **at every instant the store holds at most
//! `max` entries whose end is in the future**.
//!
//! A holder uses its permit over `[acquire answered, release sent]`, and never past
//! [`expires_at`](crate::Permit::expires_at) = the moment the acquire (or the last renew)
//! was *sent*, plus `L`. Assuming the holder's and the store's clocks advance at the same
//! rate (on one machine they are the same clock; across machines, NTP-disciplined clocks
//! drift microseconds per second, which a lease of seconds absorbs if holders keep a small
//! margin):
//!
//! - **While the store keeps its state, at most `max` holders use a permit at once.** The
//!   store applied the acquire after it was sent, so the entry's end (applied + `L`) is no
//!   earlier than the holder's `expires_at`; the release is applied after it was sent. So
//!   over the whole interval the holder uses it, the holder's entry is in the store with an
//!   end in the future: holders in use at an instant are a subset of the entries in force
//!   then, at most `max`. A renew keeps this (its entry moves to renew-applied + `L`, after
//!   the holder's new `expires_at`); a renew that finds the entry gone fails, and the holder
//!   was never entitled past the old `expires_at` anyway. An acquire retried with the same
//!   id (its reply lost) holds one entry: one slot. Redis never drops an entry in force by
//!   expiring its set: a set created by a call expires when the latest end written then
//!   passes, and every later write of an end `e` moves the set's expiry to at least `e`
//!   (`PEXPIRE … GT` never moves it earlier), so the expiry is at least every end in force;
//!   a set outlives its last entry by at most one lease, and one emptied is deleted.
//! - **A holder that dies frees its slot when its lease ends, never later and never
//!   earlier**: its entry ends at applied + `L`, the first operation on the key after that
//!   drops it, and until then it is counted. A permit whose acquire reply was lost occupies
//!   a slot the same way, for at most `L`; when a failure policy granted the caller a permit
//!   under the same id meanwhile, that permit's release removes it.
//! - **After a state-losing restart or failover, at most `2·max` until the permits granted
//!   before it end.** At the loss (time `t₀`) at most `max` holders are in use; each stops by
//!   its `expires_at ≤ t₀ + L` unless it renews, and a renew after `t₀` finds no entry and
//!   fails. New grants after `t₀` obey the invariant above among themselves: at most `max`.
//!   So in flight ≤ `2·max` during `[t₀, t₀ + L]` and ≤ `max` after (each further loss
//!   within one lease adds at most `max` more).
//! - **Under the `Local` failure policy** each node grants at most `max(1, ⌊max·share⌋)`
//!   permits from its own memory while Redis is unreachable, plus the at most `max` granted
//!   by Redis before the outage until their leases end; with `n` nodes and `share = 1/n`,
//!   about `2·max` at worst. `Allow` grants without limit (and without holding anything);
//!   `Deny` grants nothing.
//! - **The memory store never drops a held permit to make room**: permits live apart from
//!   the rate-limit table and are never evicted; at `max_keys` keys with permits in flight
//!   (after dropping ended leases) an acquire for a new key is refused and counted
//!   ([`MemoryStore::permits_refused_at_cap`](crate::MemoryStore::permits_refused_at_cap)).
//!
//! [`acquire_wait`](crate::RateLimiter::acquire_wait) is woken at once by a release through
//! the same limiter, and polls the store for releases elsewhere (2 ms at first, doubling to
//! 250 ms, never past the earliest lease end the store reported). A dropped permit is
//! released at once on the memory store and by a spawned task elsewhere; with no tokio
//! runtime to run it, it ends with its lease. Permit ids are 128 random bits from the
//! operating system, so one holder cannot guess another's id to release it.
