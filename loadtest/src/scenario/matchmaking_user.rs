//! One user of the `matchmaking` scenario: joins when the round starts, accepts its
//! proposal, signals when told, and the offerer hangs up.

use std::sync::Arc;
use std::time::Duration;

use rendezvous_protocol::{CallHangup, CallSignal, ClientMessage, MatchAccept, MatchJoin, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::rawws::{Incoming, RawWs};
use crate::scenario::conns::count;
use crate::scenario::matchmaking::{Note, Pacer, RoundDone, Seen, Stage, micros};
use crate::scenario::matchmaking_report::{CallSeen, Event, Stamp, parse};

/// The call a user is in.
struct InCall {
    id: String,
    offerer: bool,
    sent: usize,
    received: usize,
    next_send: Option<Instant>,
    /// The `Signal` stage has begun for this call.
    signaling: bool,
    hung_up: bool,
}

pub(super) struct User {
    pub(super) id: String,
    pub(super) ws: RawWs,
    pub(super) stage: watch::Receiver<Stage>,
    pub(super) done: mpsc::UnboundedSender<Note>,
    pub(super) pacer: Arc<Pacer>,
    pub(super) signals: usize,
    pub(super) origin: Instant,
}

impl User {
    pub(super) async fn run(mut self) -> Seen {
        let mut seen = Seen::default();
        let served = self.serve(&mut seen).await;
        seen.dropped = self.ws.finish(served).await;
        seen
    }

    async fn serve(&mut self, seen: &mut Seen) -> Result<(), String> {
        let (mut in_round, mut join_at, mut call) = (false, Instant::now(), None::<InCall>);
        // Between `match.join` and `match.confirmed`: queued or proposed.
        let (mut queued, mut rejoin) = (false, None::<Instant>);
        let mut round = RoundDone::default();
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let next_send = call.as_ref().and_then(|c| c.next_send);
            tokio::select! {
                biased;
                changed = self.stage.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let stage = *self.stage.borrow_and_update();
                    match stage {
                        Stage::Hold => {}
                        Stage::Round(_) if in_round => {}
                        Stage::Round(_) => {
                            in_round = true;
                            round = RoundDone::default();
                            join_at = Instant::now();
                            self.ws.send_text(&ClientMessage::from(MatchJoin::default()).to_json()).await?;
                        }
                        Stage::Signal => {
                            if let Some(c) = call.as_mut() {
                                c.signaling = true;
                                c.next_send = (self.signals > 0).then(|| self.pacer.slot());
                                self.maybe_hang_up(c).await?;
                            }
                        }
                        Stage::Close => return Ok(()),
                    }
                }
                () = tokio::time::sleep_until(rejoin.unwrap_or(far)), if rejoin.is_some() => {
                    rejoin = None;
                    seen.join_retries += 1;
                    self.ws.send_text(&ClientMessage::from(MatchJoin::default()).to_json()).await?;
                }
                () = tokio::time::sleep_until(next_send.unwrap_or(far)), if next_send.is_some() => {
                    let Some(c) = call.as_mut() else { continue };
                    let now_us = self.now_us();
                    let kind = match (c.sent, c.offerer) {
                        (0, true) => SignalKind::Offer,
                        (0, false) => SignalKind::Answer,
                        _ => SignalKind::Ice,
                    };
                    let payload = serde_json::to_value(Stamp { t: now_us, n: c.sent as u32 }).unwrap_or_default();
                    let msg = ClientMessage::from(CallSignal { call_id: c.id.clone(), kind, payload });
                    self.ws.send_text(&msg.to_json()).await?;
                    round.first_signal_us.get_or_insert(now_us);
                    c.sent += 1;
                    c.next_send = (c.sent < self.signals).then(|| self.pacer.slot());
                    self.maybe_hang_up(c).await?;
                }
                msg = self.ws.next() => match msg? {
                    Incoming::Ping(p) => self.ws.pong(&p).await?,
                    Incoming::Close(code) => return Err(format!("server closed ({code:?})")),
                    Incoming::Text(text) => {
                        let now_us = self.now_us();
                        match parse(&text) {
                            Ok(Event::Queued) => queued = true,
                            Ok(Event::Proposed { proposal_id }) => {
                                self.ws.send_text(&ClientMessage::from(MatchAccept { proposal_id }).to_json()).await?;
                            }
                            Ok(Event::Confirmed { call_id, peer, offerer }) => {
                                queued = false;
                                seen.time_to_match_us.push(join_at.elapsed().as_micros() as u64);
                                let _ = self.done.send(Note::Confirmed(now_us));
                                seen.calls.push(CallSeen { user: self.id.clone(), call_id: call_id.clone(), peer, confirmed_us: now_us, ended_us: None });
                                call = Some(InCall {
                                    id: call_id,
                                    offerer,
                                    sent: 0,
                                    received: 0,
                                    next_send: None,
                                    signaling: false,
                                    hung_up: false,
                                });
                                // Confirmed after the signal stage began (matching had
                                // stalled): signal at once.
                                if *self.stage.borrow() == Stage::Signal {
                                    if let Some(c) = call.as_mut() {
                                        c.signaling = true;
                                        c.next_send = (self.signals > 0).then(|| self.pacer.slot());
                                        self.maybe_hang_up(c).await?;
                                    }
                                }
                            }
                            Ok(Event::Signal { call_id, stamp }) => {
                                if let Some(s) = stamp {
                                    seen.relay_us.push(now_us.saturating_sub(s.t));
                                }
                                round.last_signal_us = Some(now_us);
                                if let Some(c) = call.as_mut().filter(|c| c.id == call_id) {
                                    c.received += 1;
                                    self.maybe_hang_up(c).await?;
                                }
                            }
                            Ok(Event::Ended { call_id }) => {
                                if let Some(last) = seen.calls.iter_mut().rev().find(|c| c.call_id == call_id) {
                                    last.ended_us = Some(now_us);
                                }
                                if call.as_ref().is_some_and(|c| c.id == call_id) {
                                    call = None;
                                    in_round = false;
                                    let _ = self.done.send(Note::Done(round));
                                }
                            }
                            Ok(Event::Cancelled { reason, requeued }) => {
                                count(&mut seen.cancelled, reason, 1);
                                queued = requeued;
                                if !requeued && in_round {
                                    rejoin = Some(Instant::now() + self.retry_delay());
                                }
                            }
                            Ok(Event::Error { code }) => {
                                // `busy` (lookups or queue full) and `unavailable` (the
                                // directory timed out): a client retries the join shortly.
                                if matches!(code.as_str(), "busy" | "unavailable") && in_round && !queued && call.is_none() {
                                    rejoin = Some(Instant::now() + self.retry_delay());
                                }
                                count(&mut seen.errors, code, 1);
                            }
                            Ok(Event::Other(_)) => {}
                            Err(e) => count(&mut seen.errors, e, 1),
                        }
                    }
                },
            }
        }
    }

    /// The offerer ends the call once it has sent and received every signal.
    async fn maybe_hang_up(&mut self, c: &mut InCall) -> Result<(), String> {
        if c.offerer && c.signaling && !c.hung_up && c.sent >= self.signals && c.received >= self.signals {
            c.hung_up = true;
            self.ws.send_text(&ClientMessage::from(CallHangup { call_id: c.id.clone() }).to_json()).await?;
        }
        Ok(())
    }

    /// 50–150 ms, spread by user so retries do not come back as one burst.
    fn retry_delay(&self) -> Duration {
        let spread = self.id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Duration::from_millis(50 + spread % 100)
    }

    fn now_us(&self) -> u64 {
        micros(self.origin, Instant::now())
    }
}
