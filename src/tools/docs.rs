//! `ectunnel completions SHELL` and `ectunnel man`: shell completion scripts and manual pages,
//! both generated from the clap definition of the command line, so they can never disagree
//! with `--help`. The Debian package (scripts/release) ships what these print.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap_complete::Shell;
use clap_mangen::Man;

/// What `ectunnel man` adds to the main page after the generated sections (roff). The exit
/// codes and files are the contract of the CLI and the systemd unit (config/systemd/).
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success (for \fBrun\fR: a clean shutdown after SIGTERM or SIGINT).
.TP
\fB1\fR
A runtime failure: a listener cannot bind (the message names the listener and the address),
\fBcheck \-\-connect\fR could not reach an upstream, \fBhealth\fR found the tunnel not ready.
.TP
\fB2\fR
A usage or configuration error (the message names the file, the line and the key).
.SH ENVIRONMENT
.TP
\fBECTUNNEL_CONFIG\fR
The config file when neither \fB\-c\fR nor \fB\-\-listen\fR is given.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR
Set by systemd for \fBType=notify\fR: ectunnel then sends READY=1, RELOADING=1, STOPPING=1 and
WATCHDOG=1.
.SH SIGNALS
\fBSIGHUP\fR reloads the config file (a changed \fBpassword_file\fR reloads by itself);
\fBSIGTERM\fR and \fBSIGINT\fR stop accepting, let clients finish for \fBshutdown_grace\fR, then exit.
.SH FILES
.TP
\fI/etc/ectunnel/ectunnel.toml\fR
The config the systemd unit \fBectunnel.service\fR runs with.
.TP
\fI/etc/ectunnel/redis\-auth\fR
The AUTH token (root, mode 0600). systemd hands it to the service
(\fBLoadCredential=redis\-auth:/etc/ectunnel/redis\-auth\fR) as
\fI/run/credentials/ectunnel.service/redis\-auth\fR, the config's \fBpassword_file\fR.
.SH "SEE ALSO"
\fBredis\-cli\fR(1), \fBsystemd.exec\fR(5), \fBsystemd\-creds\fR(1), \fBstunnel\fR(8)
"#;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell, mut cmd: clap::Command) -> ExitCode {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    emit(&script)
}

/// Prints the main manual page (roff) on stdout; with `dir`, writes it and one page per
/// subcommand (`ectunnel-check.1`, …, which the main page refers to) into `dir` instead.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> ExitCode {
    let Some(dir) = dir else {
        return match main_page(cmd) {
            Ok(page) => emit(&page),
            Err(e) => fail(format_args!("cannot render the manual page: {e}")),
        };
    };
    match write_pages(cmd, dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("{}: {e}", dir.display())),
    }
}

/// `ectunnel(1)`: the generated page with [`MAN_EXTRA`] before its VERSION section (rendered
/// whole, so the roff preamble comes once).
pub fn main_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let title = cmd.get_name().to_uppercase();
    let mut page = Vec::new();
    Man::new(for_man(cmd)).title(title).render(&mut page)?;
    let at = page
        .windows(b"\n.SH VERSION\n".len())
        .position(|w| w == b"\n.SH VERSION\n")
        .map_or(page.len(), |i| i + 1);
    page.splice(at..at, MAN_EXTRA.bytes());
    Ok(page)
}

/// Writes `ectunnel.1` and `ectunnel-<command>.1` for every visible subcommand into `dir`
/// (created if absent); returns the paths written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = for_man(cmd);
    cmd.build();
    let main = dir.join(format!("{}.1", cmd.get_name()));
    std::fs::write(&main, main_page(cmd.clone())?)?;
    let mut written = vec![main];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone());
        let title = man.get_filename();
        let man = man.title(title.trim_end_matches(".1").to_uppercase());
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page)?;
        std::fs::write(&path, page)?;
        written.push(path);
    }
    Ok(written)
}

/// The pages document the real subcommands only: no `help` (there is no ectunnel-help(1)).
fn for_man(cmd: clap::Command) -> clap::Command {
    cmd.disable_help_subcommand(true)
}

fn emit(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("cannot write to stdout: {e}")),
    }
}

fn fail(message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("ectunnel: {message}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> clap::Command {
        clap::Command::new("toy")
            .version("1.2.3")
            .about("A toy.")
            .arg(clap::Arg::new("config").long("config").short('c'))
            .subcommand(clap::Command::new("check").about("Checks."))
            .subcommand(clap::Command::new("convert-stunnel").about("Converts."))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn the_main_page_has_the_extra_sections_before_the_version() {
        let page = String::from_utf8(main_page(toy()).unwrap()).unwrap();
        assert!(page.lines().any(|l| l.starts_with(".TH TOY 1")), "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble: {page}");
        let at = |s: &str| {
            page.find(s)
                .unwrap_or_else(|| panic!("no {s:?} in\n{page}"))
        };
        assert!(at(".SH SUBCOMMANDS") < at(".SH \"EXIT STATUS\""));
        assert!(at(".SH FILES") < at(".SH VERSION"));
        assert!(page.contains("toy\\-convert\\-stunnel(1)"), "{page}");
        assert!(!page.contains("toy\\-help(1)"), "{page}");
        assert!(!page.contains("secret"), "{page}");
    }

    #[test]
    fn every_visible_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(toy(), dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["toy.1", "toy-check.1", "toy-convert-stunnel.1"]);
        let check = std::fs::read_to_string(dir.path().join("toy-check.1")).unwrap();
        assert!(check.contains("\n.TH TOY-CHECK 1"), "{check}");
    }
}
