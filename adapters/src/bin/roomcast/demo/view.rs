//! The demo's live view and its closing summary.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{lock, Options, Shared, Snapshot};

/// Draws the live view: in place on a terminal, one line per tick otherwise.
pub(super) struct View {
    /// Instance ids (16 hex digits).
    ids: Vec<String>,
    tty: bool,
    lines: usize,
    last: Option<(Duration, Vec<u64>, Vec<u64>)>,
}

impl View {
    pub(super) fn new(ids: Vec<String>, tty: bool) -> View {
        let instances = ids.len();
        View {
            ids,
            tty,
            lines: 0,
            last: Some((Duration::ZERO, vec![0; instances], vec![0; instances])),
        }
    }

    pub(super) fn draw(&mut self, o: &Options, s: &Snapshot) {
        let (dt, rate_in, rate_out) = match &self.last {
            Some((at, fin, fout)) => {
                let dt = (s.at - *at).as_secs_f64().max(1e-3);
                let r = |now: &[u64], then: &[u64]| -> Vec<f64> {
                    now.iter()
                        .zip(then)
                        .map(|(a, b)| a.saturating_sub(*b) as f64 / dt)
                        .collect()
                };
                (dt, r(&s.frames_in, fin), r(&s.frames_out, fout))
            }
            None => (
                0.0,
                vec![0.0; s.frames_in.len()],
                vec![0.0; s.frames_out.len()],
            ),
        };
        let _ = dt;
        self.last = Some((s.at, s.frames_in.clone(), s.frames_out.clone()));
        let mut w = s.window_cross.clone();
        w.sort_unstable();
        let lat = if w.is_empty() {
            "no samples yet".to_string()
        } else {
            format!(
                "p50 {}  p90 {}  p99 {}  ({} samples)",
                ms(pct(&w, 0.50)),
                ms(pct(&w, 0.90)),
                ms(pct(&w, 0.99)),
                w.len()
            )
        };
        let secs = s.at.as_secs_f64().min(o.duration.as_secs_f64());
        let total = o.duration.as_secs_f64();
        let conns: usize = s.connections.iter().sum();
        if !self.tty {
            println!(
                "[{secs:5.1}/{total:.0} s] in {:>6.0} msg/s  out {:>7.0} msg/s  clients {conns}  rooms live {}  cross-instance latency {lat}",
                rate_in.iter().sum::<f64>(),
                rate_out.iter().sum::<f64>(),
                s.rooms_live.iter().sum::<usize>(),
            );
            return;
        }
        let mut out = String::new();
        let width = 30;
        let done = ((secs / total) * width as f64).round() as usize;
        out.push_str(&format!(
            "[{}{}] {secs:5.1} / {total:.0} s\n",
            "#".repeat(done.min(width)),
            "-".repeat(width - done.min(width))
        ));
        out.push_str("instance               clients  from clients/s  to clients/s  rooms live\n");
        for i in 0..s.frames_in.len() {
            out.push_str(&format!(
                "{i} {:<16}  {:>9}  {:>14.0}  {:>12.0}  {:>6}/{}\n",
                self.ids.get(i).map_or("", |s| s.as_str()),
                s.connections[i],
                rate_in[i],
                rate_out[i],
                s.rooms_live[i],
                s.rooms[i]
            ));
        }
        out.push_str(&format!(
            "cross-instance latency (last {:.1} s): {lat}\n",
            dt
        ));
        out.push_str(&format!(
            "reconnects: Redis {}, clients {}   presence events {}   lost {}   gaps {}   drops {}\n",
            s.redis_reconnects,
            s.client_reconnects,
            s.presence,
            s.lost,
            s.gaps,
            s.roomcast_drops + s.slow_client_drops
        ));
        let mut stdout = std::io::stdout().lock();
        if self.lines > 0 {
            // Up to the first line of the previous view, and clear below.
            let _ = write!(stdout, "\x1b[{}A\x1b[J", self.lines);
        }
        let _ = write!(stdout, "{out}");
        let _ = stdout.flush();
        self.lines = out.lines().count();
    }
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(micros: u32) -> String {
    format!("{:.2} ms", f64::from(micros) / 1000.0)
}

/// `last` is the view's last snapshot (rates are counted up to it), `s` the one after the
/// clients stopped.
#[allow(clippy::too_many_arguments)]
pub(super) fn summary(
    o: &Options,
    shared: &Shared,
    last: &Snapshot,
    s: &Snapshot,
    ran: Duration,
    backend: &str,
    interrupted: bool,
) {
    let secs = ran.as_secs_f64().max(1e-3);
    let (sent, received) = (last.sent, last.received);
    let mut cross = lock(&shared.all_cross).clone();
    let mut local = lock(&shared.all_local).clone();
    cross.sort_unstable();
    local.sort_unstable();
    let lost = shared.lost.load(Ordering::Relaxed);
    let unordered = shared.out_of_order.load(Ordering::Relaxed);
    println!();
    println!(
        "summary{}: {:.1} s, {} instance(s), {} clients, {} rooms; {backend}",
        if interrupted { " (interrupted)" } else { "" },
        ran.as_secs_f64(),
        o.instances,
        o.clients,
        o.rooms
    );
    println!(
        "  messages sent by clients   {sent:>9}  ({:.0}/s)",
        sent as f64 / secs
    );
    println!(
        "  delivered to clients       {received:>9}  ({:.0}/s, {:.1} per message)",
        received as f64 / secs,
        if sent > 0 {
            received as f64 / sent as f64
        } else {
            0.0
        }
    );
    let line = |name: &str, v: &[u32]| {
        if v.is_empty() {
            println!("  {name:<26} no samples");
        } else {
            println!(
                "  {name:<26} p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
                ms(pct(v, 0.50)),
                ms(pct(v, 0.90)),
                ms(pct(v, 0.99)),
                ms(*v.last().unwrap_or(&0)),
                v.len()
            );
        }
    };
    line("cross-instance latency", &cross);
    line("same-instance latency", &local);
    for i in 0..o.instances {
        println!(
            "  instance {i}: {} client messages in, {} frames out",
            last.frames_in.get(i).copied().unwrap_or(0),
            last.frames_out.get(i).copied().unwrap_or(0)
        );
    }
    println!(
        "  lost {lost}, out of order {unordered}; presence events {}; client reconnects {}; Redis reconnects {}; roomcast gaps {}, drops {}",
        shared.presence.load(Ordering::Relaxed),
        shared.reconnects.load(Ordering::Relaxed),
        s.redis_reconnects,
        s.gaps,
        s.roomcast_drops + s.slow_client_drops,
    );
    let failures = shared.connect_failures.load(Ordering::Relaxed);
    if failures > 0 || s.server_errors > 0 {
        println!(
            "  client connect failures {failures}, server errors {}; last: {}",
            s.server_errors,
            lock(&shared.last_error)
                .clone()
                .or_else(|| s.last_server_error.clone())
                .unwrap_or_default()
        );
    }
    if lost == 0 && unordered == 0 {
        println!("  every message reached every member that was in its room, in order");
    }
}
