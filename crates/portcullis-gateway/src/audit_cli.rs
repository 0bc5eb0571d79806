//! `portcullis audit query`, `portcullis audit tail` and `portcullis audit summary`: reading
//! the audit log from whichever store the config (or `--store`) names. The reading itself is
//! the library's (`portcullis::audit::AuditStore::{query, tail, summary}`); this module
//! parses times and prints.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use portcullis::audit::{
    AuditEvent, AuditQuery, AuditStore, AuditSummary, StoreOptions, SummaryQuery, TailCursor,
    now_ms, open_store,
};
use portcullis_gateway::admin::dashboard::{action_filter, ip_filter};
use portcullis_gateway::config::values::parse_duration;
use portcullis_gateway::config::{AuditStore as ConfiguredStore, GatewayConfig, Purpose};

use crate::cli::{AuditCommand, AuditSource, Format};

/// Exit status of a bad config or arguments.
const EXIT_USAGE: u8 = 2;

/// Runs an `audit` subcommand.
pub fn run(command: AuditCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis audit: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match command {
            AuditCommand::Query {
                source,
                since,
                until,
                action,
                user,
                ip,
                route,
                limit,
                format,
            } => {
                let now = now_ms();
                let mut q = AuditQuery::new().limit(limit);
                // A filter that can match nothing is a typo: say so instead of printing an
                // empty result the reader would take for "no such events".
                q.action = match action.as_deref().map(action_filter).transpose() {
                    Ok(a) => a,
                    Err(e) => return usage(&format!("--action: {e}")),
                };
                q.user = user;
                q.ip = match ip.as_deref().map(ip_filter).transpose() {
                    Ok(ip) => ip,
                    Err(e) => return usage(&format!("--ip: {e}")),
                };
                q.route = route;
                for (flag, value, slot) in [
                    ("--since", since, &mut q.since_ms),
                    ("--until", until, &mut q.until_ms),
                ] {
                    if let Some(v) = value {
                        match parse_when(&v, now) {
                            Ok(ms) => *slot = Some(ms),
                            Err(e) => return usage(&format!("{flag}: {e}")),
                        }
                    }
                }
                let store = match open(&source).await {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                match store.query(&q).await {
                    Ok(events) => {
                        print_events(&events, format, true);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e.to_string()),
                }
            }
            AuditCommand::Summary {
                source,
                since,
                until,
                top,
                format,
            } => {
                if format == Format::Csv {
                    return usage("--format: a summary is printed as table or json");
                }
                let now = now_ms();
                let since = match parse_when(&since, now) {
                    Ok(ms) => ms,
                    Err(e) => return usage(&format!("--since: {e}")),
                };
                let until = match until.as_deref().map(|u| parse_when(u, now)).transpose() {
                    Ok(u) => u.unwrap_or(now + 1),
                    Err(e) => return usage(&format!("--until: {e}")),
                };
                if until <= since {
                    return usage("--until must come after --since");
                }
                let store = match open(&source).await {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                match store
                    .summary(&SummaryQuery::new(since, until).top(top))
                    .await
                {
                    Ok(summary) => {
                        print_summary(&summary, &store.describe(), format);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e.to_string()),
                }
            }
            AuditCommand::Tail {
                source,
                format,
                interval,
            } => {
                let interval = match parse_duration(&interval) {
                    Ok(d) => d,
                    Err(e) => return usage(&format!("--interval: {e}")),
                };
                let store = match open(&source).await {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                tail(store, format, interval).await
            }
        }
    })
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("portcullis audit: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("portcullis audit: {msg}");
    ExitCode::FAILURE
}

/// The store named by `--store` or the config's `[storage] audit`.
async fn open(source: &AuditSource) -> Result<Arc<dyn AuditStore>, ExitCode> {
    let mut options = StoreOptions::default();
    let url = match (&source.store, &source.config) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => {
            // Only the audit store's settings: the JWT and CSRF secrets are the gateway's,
            // not the operator's reading the log.
            let config = GatewayConfig::load(path, Purpose::AuditReader).map_err(|e| {
                eprintln!("{e}");
                ExitCode::from(EXIT_USAGE)
            })?;
            options = config.storage.store_options();
            match &config.storage.audit {
                ConfiguredStore::Sqlite(p) => format!("sqlite://{}", p.display()),
                ConfiguredStore::Jsonl(p) => format!("jsonl://{}", p.display()),
                ConfiguredStore::Postgres(url) => url.clone(),
                ConfiguredStore::Stdout => {
                    return Err(usage(
                        "the config sends audit events to stdout, which cannot be read back",
                    ));
                }
            }
        }
        (None, None) => {
            return Err(usage(
                "name the audit store with --config FILE or --store URL",
            ));
        }
    };
    // Reading must not create an empty database where a typo points.
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("jsonl://"))
        && !std::path::Path::new(path).exists()
    {
        return Err(fail(&format!("{path}: no such audit store")));
    }
    open_store(&url, &options)
        .await
        .map_err(|e| fail(&e.to_string()))
}

async fn tail(store: Arc<dyn AuditStore>, format: Format, interval: Duration) -> ExitCode {
    const PAGE: u32 = 1000;
    let mut cursor = TailCursor::Start;
    let mut first = true;
    loop {
        match store.tail(&cursor, PAGE).await {
            Ok((events, next)) => {
                cursor = next;
                if !events.is_empty() {
                    print_events(&events, format, first);
                    first = false;
                }
                if events.len() as u32 >= PAGE {
                    continue;
                }
            }
            // The store may be restarting: keep following.
            Err(e) => eprintln!("portcullis audit tail: {e}"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Parses `--since`/`--until`: a duration ago (`1h`, `7d`) or an RFC 3339 time.
fn parse_when(s: &str, now: u64) -> Result<u64, String> {
    if s.starts_with(|c: char| c.is_ascii_digit()) && !s.contains('-') {
        return parse_duration(s).map(|d| now.saturating_sub(d.as_millis() as u64));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?} is neither a duration (1h, 7d) nor an RFC 3339 time (2026-01-31T12:00:00Z)")
    })
}

/// `YYYY-MM-DD[THH:MM[:SS[.fff]]](Z|±HH:MM)`, or a bare date (midnight UTC), as Unix ms.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (time, offset_min) = if rest.is_empty() {
        ("00:00:00", 0)
    } else if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (t, sign * (num(oh)? * 60 + num(om)?))
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let h = num(t.next()?)?;
    let mi = num(t.next()?)?;
    let sec = t.next().map_or(Some(0), num)?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let ms = if frac.is_empty() {
        0
    } else {
        let f = &frac[..frac.len().min(3)];
        num(f)? * 10i64.pow(3 - f.len() as u32)
    };
    // Howard Hinnant's days_from_civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + ms;
    u64::try_from(total).ok()
}

const COLUMNS: [&str; 11] = [
    "ts",
    "action",
    "outcome",
    "status",
    "method",
    "route",
    "path",
    "principal",
    "client_ip",
    "request_id",
    "metadata",
];

fn cells(e: &AuditEvent) -> [String; 11] {
    [
        e.ts_rfc3339(),
        e.action.as_str().to_string(),
        e.outcome.as_str().to_string(),
        e.status.to_string(),
        e.method.clone(),
        e.route.clone(),
        e.path.clone(),
        e.principal.clone().unwrap_or_default(),
        e.client_ip.clone().unwrap_or_default(),
        e.request_id.clone(),
        e.metadata.to_string(),
    ]
}

fn print_events(events: &[AuditEvent], format: Format, header: bool) {
    let mut out = std::io::stdout().lock();
    let _ = match format {
        Format::Json => events.iter().try_for_each(|e| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["ts"] = e.ts_rfc3339().into();
            writeln!(out, "{v}")
        }),
        Format::Csv => {
            let line = |cols: &[String]| {
                cols.iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut r = Ok(());
            if header {
                let h: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
                r = r.and(writeln!(out, "id,{}", line(&h)));
            }
            events.iter().fold(r, |r, e| {
                r.and_then(|_| writeln!(out, "{},{}", csv_field(&e.id), line(&cells(e))))
            })
        }
        Format::Table => {
            // The metadata column is last and not padded. Control characters are escaped: a
            // line break or a terminal escape in a client's value would forge a row.
            let rows: Vec<Vec<String>> = events.iter().map(|e| cells(e).to_vec()).collect();
            let h: Vec<String> = COLUMNS.iter().map(|c| c.to_uppercase()).collect();
            write!(out, "{}", table(header.then_some(&h[..]), &rows))
        }
    };
    let _ = out.flush();
}

/// Aligned columns, two spaces apart, the last one not padded; each cell through
/// [`table_cell`], so a client's value can neither break a row nor reach the terminal as an
/// escape sequence.
fn table(header: Option<&[String]>, rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = header
        .into_iter()
        .map(<[String]>::to_vec)
        .chain(rows.iter().cloned())
        .map(|r| r.iter().map(|c| table_cell(c)).collect())
        .collect();
    let mut width: Vec<usize> = Vec::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            let n = c.chars().count();
            match width.get_mut(i) {
                Some(w) => *w = (*w).max(n),
                None => width.push(n),
            }
        }
    }
    let mut s = String::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.push('\n');
    }
    s
}

/// `audit summary`'s output: the summary as one JSON object, or a few tables.
fn print_summary(s: &AuditSummary, store: &str, format: Format) {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{}", serde_json::to_value(s).unwrap_or_default());
        return;
    }
    let rfc3339 = portcullis::audit::format_rfc3339_ms;
    let mut text = format!(
        "{} to {} ({store}): {} events, {} denied{}\n",
        rfc3339(s.since_ms),
        rfc3339(s.until_ms),
        s.total,
        s.denied,
        if s.truncated {
            "; counted from the newest events only"
        } else {
            ""
        },
    );
    let section = |text: &mut String, title: &str, head: &[&str], rows: Vec<Vec<String>>| {
        text.push_str(&format!("\n{title}\n"));
        if rows.is_empty() {
            text.push_str("(none)\n");
        } else {
            let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
            text.push_str(&table(Some(&head), &rows));
        }
    };
    section(
        &mut text,
        "Events by action",
        &["ACTION", "OUTCOME", "EVENTS"],
        s.by_action
            .iter()
            .map(|a| vec![a.action.clone(), a.outcome.clone(), a.count.to_string()])
            .collect(),
    );
    section(
        &mut text,
        "Top offenders (denied events by client)",
        &["CLIENT", "DENIED", "LAST", "ACTIONS"],
        s.offenders
            .iter()
            .map(|o| {
                let actions: Vec<String> = o
                    .actions
                    .iter()
                    .map(|a| format!("{} {}", a.name, a.count))
                    .collect();
                vec![
                    o.client_ip.clone(),
                    o.denied.to_string(),
                    rfc3339(o.last_ms),
                    actions.join(", "),
                ]
            })
            .collect(),
    );
    let named = |list: &[portcullis::audit::NamedCount]| {
        list.iter()
            .map(|n| vec![n.name.clone(), n.count.to_string()])
            .collect::<Vec<_>>()
    };
    section(
        &mut text,
        "Refused users",
        &["USER", "DENIED"],
        named(&s.denied_users),
    );
    section(
        &mut text,
        "Rate-limited routes",
        &["ROUTE", "429s"],
        named(&s.rate_limited_routes),
    );
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A table cell: `s` with each control character escaped as Rust writes it (`\n`,
/// `\u{1b}`), so every event stays on one line and no escape sequence reaches the terminal.
fn table_cell(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180); a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so spreadsheets do not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        assert_eq!(parse_when("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123Z"),
            Some(951_782_400_123)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T01:00:00+01:00"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29"), Some(951_782_400_000));
        assert!(parse_when("yesterday", 0).is_err());
    }

    #[test]
    fn table_cells_escape_control_characters() {
        assert_eq!(
            table_cell("evil\n2026-12-07T00:00:00Z  forbidden  FAKE"),
            "evil\\n2026-12-07T00:00:00Z  forbidden  FAKE"
        );
        assert_eq!(table_cell("\u{1b}[31mred\r"), "\\u{1b}[31mred\\r");
        assert_eq!(table_cell("jos\u{e9} plain"), "jos\u{e9} plain");
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("plain"), "plain");
    }
}
