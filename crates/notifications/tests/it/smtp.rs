//! A small real SMTP server for the tests: a Tokio TCP listener on 127.0.0.1 speaking enough
//! SMTP for lettre (greeting, EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT). It records every message it accepts and can be switched to refuse them (`451` to
//! `MAIL FROM`, a temporary failure), counting the refusals.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notifications::{SmtpSettings, SmtpTls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    accepted: Vec<Received>,
    failing: bool,
    refused: usize,
}

#[derive(Debug)]
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the SMTP listener");
        let server = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            cancel: CancellationToken::new(),
        };
        let state = server.state.clone();
        let cancel = server.cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        tokio::spawn(async move {
                            // A client that hangs up mid-session is not the test's concern.
                            let _ = session(stream, state).await;
                        });
                    }
                }
            }
        });
        server
    }

    /// Settings for a plain-text connection to this server.
    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".to_owned(),
            port: self.addr.port(),
            username: None,
            password: None,
            tls: SmtpTls::None,
            timeout: Duration::from_secs(5),
        }
    }

    /// From now on, refuse (`true`) or accept (`false`) messages.
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn accepted(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    /// How many messages were refused while failing.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 mercato-test ESMTP ready\r\n").await?;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-mercato-test greets you\r\n250 8BITMIME\r\n",
            "HELO" => b"250 mercato-test\r\n",
            "MAIL" => {
                let mut state = state.lock().unwrap();
                if state.failing {
                    state.refused += 1;
                    b"451 4.3.0 mailbox temporarily unavailable\r\n"
                } else {
                    mail_from = Some(address_in(&command));
                    rcpt_to.clear();
                    b"250 2.1.0 OK\r\n"
                }
            }
            "RCPT" if mail_from.is_some() => {
                rcpt_to.push(address_in(&command));
                b"250 2.1.5 OK\r\n"
            }
            "RCPT" => b"503 5.5.1 MAIL first\r\n",
            "DATA" if !rcpt_to.is_empty() => {
                write.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let data = read_data(&mut lines).await?;
                state.lock().unwrap().accepted.push(Received {
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                b"250 2.0.0 queued\r\n"
            }
            "DATA" => b"503 5.5.1 RCPT first\r\n",
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The message after `DATA`, up to the line holding a single `.`.
async fn read_data(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
        data.extend_from_slice(unstuffed);
    }
}

/// `user@example.com` from `MAIL FROM:<user@example.com> SIZE=…`.
fn address_in(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}
