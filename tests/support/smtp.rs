//! An SMTP server for alert tests, speaking real SMTP (RFC 5321) with STARTTLS (RFC 3207) over tokio-rustls: it
//! greets, answers EHLO offering STARTTLS, upgrades the connection with the test CA's server certificate, and
//! takes MAIL, RCPT and DATA only once the connection is encrypted (530 before), as a relay that requires TLS
//! does. Every message it accepts is kept with its envelope and whether it came over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::TlsAcceptor;

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-stuffing undone.
    pub data: String,
    /// Whether STARTTLS preceded the transaction.
    pub tls: bool,
}

impl Mail {
    /// The value of header `name` (first occurrence; folded lines joined).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(current) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    current.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((field, rest)) = line.split_once(':') {
                if field.eq_ignore_ascii_case(name) {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }
}

/// A running server.
pub struct SmtpServer {
    pub address: SocketAddr,
    received: Mutex<mpsc::UnboundedReceiver<Mail>>,
}

/// What one stage of a conversation ended with.
enum Ended {
    Closed,
    StartTls,
}

impl SmtpServer {
    /// Starts a server that upgrades connections with `tls` (the certificate for `localhost`).
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP server");
        let address = listener.local_addr().expect("address");
        let (sender, received) = mpsc::unbounded_channel();
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (sender, acceptor) = (sender.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = session(stream, acceptor, sender).await;
                });
            }
        });
        Self { address, received: Mutex::new(received) }
    }

    /// `smtp://localhost:PORT` (STARTTLS).
    pub fn url(&self) -> String {
        format!("smtp://localhost:{}", self.address.port())
    }

    /// The next message; panics when none comes within `within`.
    pub async fn next(&self, within: Duration) -> Mail {
        let mut received = self.received.lock().await;
        tokio::time::timeout(within, received.recv())
            .await
            .unwrap_or_else(|_| panic!("no mail within {within:?}"))
            .expect("server running")
    }
}

async fn session(stream: TcpStream, acceptor: TlsAcceptor, sender: mpsc::UnboundedSender<Mail>) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    plain.get_mut().write_all(b"220 localhost ESMTP tollgate-test\r\n").await?;
    match converse(&mut plain, false, &sender).await? {
        Ended::Closed => Ok(()),
        Ended::StartTls => {
            let tls = acceptor.accept(plain.into_inner()).await?;
            let mut tls = BufReader::new(tls);
            converse(&mut tls, true, &sender).await.map(|_| ())
        }
    }
}

/// Answers commands until QUIT, EOF or STARTTLS.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    tls: bool,
    sender: &mpsc::UnboundedSender<Mail>,
) -> std::io::Result<Ended> {
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(Ended::Closed);
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" if tls => "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into(),
            "EHLO" => "250-localhost\r\n250-8BITMIME\r\n250 STARTTLS\r\n".into(),
            "HELO" => "250 localhost\r\n".into(),
            "STARTTLS" if !tls => {
                stream.get_mut().write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
                stream.get_mut().flush().await?;
                return Ok(Ended::StartTls);
            }
            "MAIL" | "RCPT" | "DATA" if !tls => "530 5.7.0 must issue a STARTTLS command first\r\n".into(),
            "MAIL" => {
                from = Some(address_of(&command));
                to.clear();
                "250 2.1.0 ok\r\n".into()
            }
            "RCPT" if from.is_some() => {
                to.push(address_of(&command));
                "250 2.1.5 ok\r\n".into()
            }
            "DATA" if from.is_some() && !to.is_empty() => {
                stream.get_mut().write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                stream.get_mut().flush().await?;
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await? == 0 {
                        return Ok(Ended::Closed);
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let mail = Mail { from: from.take().unwrap_or_default(), to: std::mem::take(&mut to), data, tls };
                let _ = sender.send(mail);
                "250 2.0.0 queued\r\n".into()
            }
            "RCPT" | "DATA" => "503 5.5.1 bad sequence of commands\r\n".into(),
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 ok\r\n".into(),
            "QUIT" => {
                stream.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                stream.get_mut().flush().await?;
                return Ok(Ended::Closed);
            }
            _ => "502 5.5.2 command not recognized\r\n".into(),
        };
        stream.get_mut().write_all(reply.as_bytes()).await?;
        stream.get_mut().flush().await?;
    }
}

/// The address in `MAIL FROM:<a@b> …` or `RCPT TO:<a@b>`.
fn address_of(command: &str) -> String {
    let start = command.find('<').map_or(0, |at| at + 1);
    let end = command[start..].find('>').map_or(command.len(), |at| start + at);
    command[start..end].to_owned()
}
