//! Shell commands as `bash:run` rules see them: a command line is parsed as bash (brush-parser) and split into the
//! simple commands it would run — through `&&`, `||`, `;`, `|`, `&`, newlines, subshells, groups, `$(…)`,
//! backticks, process substitutions, `bash -c`, `eval` and wrappers such as `sudo` — with quoting removed.
//!
//! Whatever cannot be read for sure is `Unreadable`, and rules treat it as matching every deny rule (fail closed).

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use brush_parser::ast::{self, CommandPrefixOrSuffixItem as Item};
use brush_parser::word::{self, WordPiece, WordPieceWithSource};
use brush_parser::{ParserOptions, Token};

/// Longest command read; a longer one is `Unreadable::TooLong`.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Deepest nesting of compound commands, substitutions and scripts (`bash -c`, `eval`) read.
pub const MAX_DEPTH: usize = 32;
/// Most `$(` and `${` in one text handed to the parser (each may nest inside the one before, and the parser
/// recurses on them).
pub const MAX_EXPANSIONS: usize = 128;
/// Most compound commands (`if`, `for`, `while`, `until`, `case`, `select`, `(…)`, `{…}`, `[[…]]`) in one text
/// handed to the parser, for the same reason.
pub const MAX_COMPOUND_COMMANDS: usize = 64;
/// Most simple commands one command line may hold.
pub const MAX_SIMPLE_COMMANDS: usize = 1024;
/// The texts of the simple commands together may be at most this many times the command line's length, plus
/// `MIN_OUTPUT_BYTES`: a wrapper (`sudo sudo … ls`) or a substitution repeats the text it holds in each command listed,
/// so without this bound a 64 KiB command line could be split into a thousand commands of up to 64 KiB each.
pub const MAX_OUTPUT_FACTOR: usize = 8;
/// What the texts of the simple commands may hold together whatever the command line's length.
pub const MIN_OUTPUT_BYTES: usize = 4096;

/// One command the shell would run, as rules match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleCommand {
    /// The program without its directory, then its arguments, quoting removed, each separated by one space, then
    /// its redirections (`>out.txt`, `2>&1`). Expansions whose value is unknown stay as written (`$HOME`,
    /// `$(date)`). A command that runs another (`sudo`, `env`, `bash -c`) is listed and so is the one it runs.
    pub text: String,
    /// Output is redirected into a file (`>`, `>>`, `&>`, `<>`, other than `/dev/null` and the standard streams).
    pub writes_file: bool,
}

/// Why a command line cannot be read for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Longer than `MAX_COMMAND_BYTES`.
    TooLong,
    /// Nested deeper than `MAX_DEPTH`.
    TooDeep,
    /// More expansions, compound commands or simple commands than the bounds above, or simple commands whose texts
    /// together are longer than `MAX_OUTPUT_FACTOR` allows.
    TooComplex,
    /// Not complete bash syntax (an unterminated quote, a missing `fi`, …).
    Syntax,
    /// The program to run is only known at run time: `$cmd …`, `$(echo curl) …`, a glob or a brace expansion.
    ComputedProgram,
    /// A script is only known at run time: `bash -c "$x"`, `eval "$x"`, a shell reading an expanded here-document.
    ComputedScript,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Unreadable::TooLong => "longer than 64 KiB",
            Unreadable::TooDeep => "nested too deeply",
            Unreadable::TooComplex => "too many expansions or commands",
            Unreadable::Syntax => "not complete shell syntax",
            Unreadable::ComputedProgram => "the program to run is computed at run time",
            Unreadable::ComputedScript => "a script it runs is computed at run time",
        })
    }
}

/// Splits `command` into the simple commands it runs, in order.
pub fn split(command: &str) -> Result<Vec<SimpleCommand>, Unreadable> {
    if command.len() > MAX_COMMAND_BYTES {
        return Err(Unreadable::TooLong);
    }
    let output_left = MAX_OUTPUT_FACTOR * command.len() + MIN_OUTPUT_BYTES;
    let mut walker = Walker { commands: Vec::new(), output_left, options: ParserOptions::default() };
    walker.script(command, 0)?;
    Ok(walker.commands)
}

/// Stack the parser may need for a text within the bounds above (measured: about 8 KiB per nested compound command
/// in an optimised build, several times that in a debug build). A caller with less left gets a new stack segment.
const PARSER_STACK: usize = if cfg!(debug_assertions) { 16 << 20 } else { 1536 << 10 };

/// Runs a parser call with enough stack, turning a panic inside the parser into `Syntax`.
fn guarded<T>(parse: impl FnOnce() -> Option<T>) -> Result<T, Unreadable> {
    let result = stacker::maybe_grow(PARSER_STACK, 2 * PARSER_STACK, || panic::catch_unwind(AssertUnwindSafe(parse)));
    result.ok().flatten().ok_or(Unreadable::Syntax)
}

/// A word after quote removal.
struct Word {
    text: String,
    /// Its value is only known at run time: it holds an expansion, a substitution, or an unquoted glob or brace.
    computed: bool,
}

/// A redirection, rendered.
struct Redirection {
    text: String,
    writes_file: bool,
}

/// A script a command reads on standard input, from a here-document or here-string.
struct Stdin {
    text: String,
    computed: bool,
}

struct Walker {
    commands: Vec<SimpleCommand>,
    /// Bytes of simple commands' texts still allowed (`MAX_OUTPUT_FACTOR`).
    output_left: usize,
    options: ParserOptions,
}

impl Walker {
    /// Parses `text` as a script and walks it.
    fn script(&mut self, text: &str, depth: usize) -> Result<(), Unreadable> {
        if depth > MAX_DEPTH {
            return Err(Unreadable::TooDeep);
        }
        // The tokenizer recurses on every `$(` and `${`, the parser on every compound command: both are counted
        // before they run, so no command can exhaust the stack.
        if text.matches("$(").count() + text.matches("${").count() > MAX_EXPANSIONS {
            return Err(Unreadable::TooComplex);
        }
        let options = &self.options;
        // brush-parser 0.4's tokenizer never returns, queueing tokens until memory runs out, on a here-document
        // operator whose delimiter is empty (`<< ;`, `<<''`) or holds an expansion (`<<$( x`) when a `$(`, `${` or
        // `$[` is left open at the end of the text (`$(<< ;${`, `<<''&$(`, `<<$( &#`). So the text is first
        // tokenized with a delimiter given to each operator whose delimiter is empty: when that fails, the text is
        // refused (bash rejects a missing delimiter; an empty one, which no one writes, is refused too); when it
        // succeeds, every such `<<` was inside quotes, a comment or a here-document body, and the text is safe to
        // tokenize. A delimiter holding an expansion (which no one writes either) is refused.
        if let Some(delimited) = with_here_document_delimiters(text)? {
            if text.contains(MISSING_DELIMITER) {
                return Err(Unreadable::Syntax);
            }
            guarded(|| brush_parser::uncached_tokenize_str(&delimited, &options.tokenizer_options()).ok())?;
        }
        let tokens = guarded(|| brush_parser::uncached_tokenize_str(text, &options.tokenizer_options()).ok())?;
        let compound = tokens.iter().filter(|token| opens_compound_command(token)).count();
        if compound > MAX_COMPOUND_COMMANDS {
            return Err(Unreadable::TooComplex);
        }
        let program = guarded(|| brush_parser::parse_tokens(&tokens, options).ok())?;
        for list in &program.complete_commands {
            self.list(list, depth)?;
        }
        Ok(())
    }

    fn list(&mut self, list: &ast::CompoundList, depth: usize) -> Result<(), Unreadable> {
        if depth > MAX_DEPTH {
            return Err(Unreadable::TooDeep);
        }
        for ast::CompoundListItem(and_or, _) in &list.0 {
            self.pipeline(&and_or.first, depth)?;
            for next in &and_or.additional {
                let (ast::AndOr::And(pipeline) | ast::AndOr::Or(pipeline)) = next;
                self.pipeline(pipeline, depth)?;
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, pipeline: &ast::Pipeline, depth: usize) -> Result<(), Unreadable> {
        pipeline.seq.iter().try_for_each(|command| self.command(command, depth))
    }

    fn command(&mut self, command: &ast::Command, depth: usize) -> Result<(), Unreadable> {
        let redirects = match command {
            ast::Command::Simple(simple) => return self.simple(simple, depth),
            ast::Command::Compound(compound, redirects) => {
                self.compound(compound, depth + 1)?;
                redirects
            }
            ast::Command::Function(function) => {
                // The body runs when the function is called, which this command line may do.
                self.compound(&function.body.0, depth + 1)?;
                &function.body.1
            }
            ast::Command::ExtendedTest(test, redirects) => {
                self.test(&test.expr, depth)?;
                redirects
            }
        };
        // `{ …; } >file` writes a file whatever runs inside.
        let mut rendered = Vec::new();
        for redirect in redirects.iter().flat_map(|list| &list.0) {
            rendered.push(self.redirection(redirect, depth, &mut None)?);
        }
        self.record_redirections(&rendered)
    }

    fn compound(&mut self, compound: &ast::CompoundCommand, depth: usize) -> Result<(), Unreadable> {
        use ast::CompoundCommand as C;
        match compound {
            C::Arithmetic(arithmetic) => self.substitutions(&arithmetic.expr.value, depth),
            C::ArithmeticForClause(clause) => {
                for expression in [&clause.initializer, &clause.condition, &clause.updater].into_iter().flatten() {
                    self.substitutions(&expression.value, depth)?;
                }
                self.list(&clause.body.list, depth)
            }
            C::BraceGroup(group) => self.list(&group.list, depth),
            C::Subshell(subshell) => self.list(&subshell.list, depth),
            C::ForClause(clause) => {
                for value in clause.values.iter().flatten() {
                    self.substitutions(&value.value, depth)?;
                }
                self.list(&clause.body.list, depth)
            }
            C::CaseClause(clause) => {
                self.substitutions(&clause.value.value, depth)?;
                for case in &clause.cases {
                    for pattern in &case.patterns {
                        self.substitutions(&pattern.value, depth)?;
                    }
                    if let Some(list) = &case.cmd {
                        self.list(list, depth)?;
                    }
                }
                Ok(())
            }
            C::IfClause(clause) => {
                self.list(&clause.condition, depth)?;
                self.list(&clause.then, depth)?;
                for branch in clause.elses.iter().flatten() {
                    if let Some(condition) = &branch.condition {
                        self.list(condition, depth)?;
                    }
                    self.list(&branch.body, depth)?;
                }
                Ok(())
            }
            C::WhileClause(clause) | C::UntilClause(clause) => {
                self.list(&clause.0, depth)?;
                self.list(&clause.1.list, depth)
            }
            C::Coprocess(coprocess) => self.command(&coprocess.body, depth),
        }
    }

    /// Walks the substitutions in a `[[ … ]]` test.
    fn test(&mut self, expression: &ast::ExtendedTestExpr, depth: usize) -> Result<(), Unreadable> {
        use ast::ExtendedTestExpr as E;
        match expression {
            E::And(left, right) | E::Or(left, right) => {
                self.test(left, depth)?;
                self.test(right, depth)
            }
            E::Not(inner) | E::Parenthesized(inner) => self.test(inner, depth),
            E::UnaryTest(_, operand) => self.substitutions(&operand.value, depth),
            E::BinaryTest(_, left, right) => {
                self.substitutions(&left.value, depth)?;
                self.substitutions(&right.value, depth)
            }
        }
    }

    fn simple(&mut self, simple: &ast::SimpleCommand, depth: usize) -> Result<(), Unreadable> {
        let mut words = Vec::new();
        let mut redirections = Vec::new();
        let mut stdin = None;
        let prefix = simple.prefix.iter().flat_map(|prefix| &prefix.0);
        for item in prefix {
            match item {
                // `A=1 curl …` runs curl: assignments before the program are not part of what rules match.
                Item::AssignmentWord(assignment, _) => self.assignment(assignment, depth)?,
                item => self.item(item, depth, &mut words, &mut redirections, &mut stdin)?,
            }
        }
        if let Some(program) = &simple.word_or_name {
            words.push(self.word(&program.value, depth)?);
        }
        for item in simple.suffix.iter().flat_map(|suffix| &suffix.0) {
            self.item(item, depth, &mut words, &mut redirections, &mut stdin)?;
        }
        if words.is_empty() {
            return self.record_redirections(&redirections);
        }
        self.run(&words, &redirections, stdin.as_ref(), depth)
    }

    /// A word or redirection of a simple command.
    fn item(
        &mut self,
        item: &Item,
        depth: usize,
        words: &mut Vec<Word>,
        redirections: &mut Vec<Redirection>,
        stdin: &mut Option<Stdin>,
    ) -> Result<(), Unreadable> {
        match item {
            Item::Word(word) => words.push(self.word(&word.value, depth)?),
            // `export A=$(x)`: the assignment is an argument of `export`.
            Item::AssignmentWord(_, word) => words.push(self.word(&word.value, depth)?),
            Item::IoRedirect(redirect) => redirections.push(self.redirection(redirect, depth, stdin)?),
            Item::ProcessSubstitution(kind, subshell) => {
                self.list(&subshell.list, depth + 1)?;
                words.push(Word { text: format!("{kind}(…)"), computed: true });
            }
        }
        Ok(())
    }

    /// Walks the substitutions in an assignment's value.
    fn assignment(&mut self, assignment: &ast::Assignment, depth: usize) -> Result<(), Unreadable> {
        match &assignment.value {
            ast::AssignmentValue::Scalar(value) => self.substitutions(&value.value, depth),
            ast::AssignmentValue::Array(values) => {
                for (key, value) in values {
                    if let Some(key) = key {
                        self.substitutions(&key.value, depth)?;
                    }
                    self.substitutions(&value.value, depth)?;
                }
                Ok(())
            }
        }
    }

    /// Records the commands a simple command runs: itself, then whatever it runs in turn.
    fn run(
        &mut self,
        words: &[Word],
        redirections: &[Redirection],
        stdin: Option<&Stdin>,
        depth: usize,
    ) -> Result<(), Unreadable> {
        let mut words = words;
        while let Some(program) = words.first() {
            if program.computed {
                return Err(Unreadable::ComputedProgram);
            }
            self.record(words, redirections)?;
            let name = program_name(&program.text);
            let arguments = &words[1..];
            match runs(name, arguments) {
                Runs::Nothing => return Ok(()),
                Runs::Command(start) => words = &arguments[start..],
                Runs::Commands(ranges) => {
                    for range in ranges {
                        self.run(&arguments[range], redirections, None, depth + 1)?;
                    }
                    return Ok(());
                }
                Runs::Script(index) => {
                    let script = &arguments[index];
                    if script.computed {
                        return Err(Unreadable::ComputedScript);
                    }
                    return self.script(&script.text, depth + 1);
                }
                Runs::Arguments(start) => {
                    let arguments = &arguments[start..];
                    if arguments.iter().any(|argument| argument.computed) {
                        return Err(Unreadable::ComputedScript);
                    }
                    let script: Vec<&str> = arguments.iter().map(|argument| argument.text.as_str()).collect();
                    return self.script(&script.join(" "), depth + 1);
                }
                Runs::Stdin => {
                    return match stdin {
                        Some(Stdin { computed: true, .. }) => Err(Unreadable::ComputedScript),
                        Some(Stdin { text, .. }) => self.script(text, depth + 1),
                        // A pipe or a file: its commands are not in this command line.
                        None => Ok(()),
                    };
                }
            }
        }
        Ok(())
    }

    /// Adds one simple command: the program without its directory, its arguments, its redirections.
    fn record(&mut self, words: &[Word], redirections: &[Redirection]) -> Result<(), Unreadable> {
        let Some((program, arguments)) = words.split_first() else { return Ok(()) };
        let mut text = program_name(&program.text).to_owned();
        for argument in arguments {
            text.push(' ');
            text.push_str(&argument.text);
        }
        for redirection in redirections {
            text.push(' ');
            text.push_str(&redirection.text);
        }
        let writes_file = redirections.iter().any(|redirection| redirection.writes_file);
        self.push(SimpleCommand { text, writes_file })
    }

    /// Adds the redirections of a command that has no words of its own (`>file`, `{ …; } >file`) when they write
    /// a file; those that only read add nothing a rule needs.
    fn record_redirections(&mut self, redirections: &[Redirection]) -> Result<(), Unreadable> {
        if !redirections.iter().any(|redirection| redirection.writes_file) {
            return Ok(());
        }
        let texts: Vec<&str> = redirections.iter().map(|redirection| redirection.text.as_str()).collect();
        let writes_file = redirections.iter().any(|redirection| redirection.writes_file);
        self.push(SimpleCommand { text: texts.join(" "), writes_file })
    }

    fn push(&mut self, command: SimpleCommand) -> Result<(), Unreadable> {
        if self.commands.len() >= MAX_SIMPLE_COMMANDS {
            return Err(Unreadable::TooComplex);
        }
        self.output_left = self.output_left.checked_sub(command.text.len()).ok_or(Unreadable::TooComplex)?;
        self.commands.push(command);
        Ok(())
    }

    fn redirection(
        &mut self,
        redirect: &ast::IoRedirect,
        depth: usize,
        stdin: &mut Option<Stdin>,
    ) -> Result<Redirection, Unreadable> {
        let descriptor = |fd: &Option<i32>| fd.map(|fd| fd.to_string()).unwrap_or_default();
        Ok(match redirect {
            ast::IoRedirect::File(fd, kind, target) => {
                use ast::IoFileRedirectKind as K;
                let (target, is_name) = match target {
                    ast::IoFileRedirectTarget::Filename(word) => (self.word(&word.value, depth)?.text, true),
                    ast::IoFileRedirectTarget::Fd(fd) => (fd.to_string(), false),
                    ast::IoFileRedirectTarget::Duplicate(word) => {
                        let text = self.word(&word.value, depth)?.text;
                        // `>&file` is `&>file`.
                        let is_name = !(text == "-" || text.bytes().all(|b| b.is_ascii_digit()));
                        (text, is_name)
                    }
                    ast::IoFileRedirectTarget::ProcessSubstitution(kind, subshell) => {
                        self.list(&subshell.list, depth + 1)?;
                        (format!("{kind}(…)"), false)
                    }
                };
                let writes = matches!(kind, K::Write | K::Append | K::Clobber | K::ReadAndWrite | K::DuplicateOutput);
                let writes_file = writes && is_name && !is_stream(&target);
                Redirection { text: format!("{}{kind}{target}", descriptor(fd)), writes_file }
            }
            ast::IoRedirect::OutputAndError(word, append) => {
                let target = self.word(&word.value, depth)?.text;
                let operator = if *append { "&>>" } else { "&>" };
                Redirection { writes_file: !is_stream(&target), text: format!("{operator}{target}") }
            }
            ast::IoRedirect::HereDocument(fd, document) => {
                let body = &document.doc.value;
                let computed = if document.requires_expansion {
                    self.word(&as_double_quoted(body), depth)?.computed
                } else {
                    false
                };
                *stdin = Some(Stdin { text: body.clone(), computed });
                let operator = if document.remove_tabs { "<<-" } else { "<<" };
                Redirection {
                    text: format!("{}{operator}{}", descriptor(fd), document.here_end.value),
                    writes_file: false,
                }
            }
            ast::IoRedirect::HereString(fd, word) => {
                let word = self.word(&word.value, depth)?;
                let text = format!("{}<<<{}", descriptor(fd), word.text);
                *stdin = Some(Stdin { text: word.text, computed: word.computed });
                Redirection { text, writes_file: false }
            }
        })
    }

    /// Walks the substitutions in a word whose text rules do not match (assignments, loop values, patterns).
    fn substitutions(&mut self, raw: &str, depth: usize) -> Result<(), Unreadable> {
        self.word(raw, depth).map(drop)
    }

    /// A word after quote removal; the commands in its substitutions are walked.
    fn word(&mut self, raw: &str, depth: usize) -> Result<Word, Unreadable> {
        let options = &self.options;
        let pieces = guarded(|| word::parse(raw, options).ok())?;
        let mut word = Word { text: String::with_capacity(raw.len()), computed: false };
        for piece in &pieces {
            self.piece(piece, raw, false, &mut word, depth)?;
        }
        Ok(word)
    }

    fn piece(
        &mut self,
        piece: &WordPieceWithSource,
        raw: &str,
        quoted: bool,
        word: &mut Word,
        depth: usize,
    ) -> Result<(), Unreadable> {
        let source = raw.get(piece.start_index..piece.end_index).unwrap_or_default();
        match &piece.piece {
            WordPiece::Text(text) => {
                // Unquoted, these are globs and brace expansions: the shell rewrites the word.
                if !quoted && text.contains(['*', '?', '[', '{']) {
                    word.computed = true;
                }
                word.text.push_str(text);
            }
            WordPiece::SingleQuotedText(text) => word.text.push_str(text),
            WordPiece::AnsiCQuotedText(text) => word.text.push_str(&ansi_c(text)),
            WordPiece::DoubleQuotedSequence(pieces) | WordPiece::GettextDoubleQuotedSequence(pieces) => {
                for inner in pieces {
                    self.piece(inner, raw, true, word, depth)?;
                }
            }
            // `~/bin/curl` is still curl; the home directory is not known, so the tilde stays.
            WordPiece::TildeExpansion(_) => word.text.push_str(source),
            WordPiece::EscapeSequence(escape) => {
                word.text.push_str(escape.get(1..).unwrap_or_default().trim_start_matches('\n'))
            }
            WordPiece::ParameterExpansion(_) => {
                word.computed = true;
                word.text.push_str(source);
                // `${x:-$(curl …)}` runs curl when x is empty.
                if source.contains(['`', '(']) {
                    let inner = source.strip_prefix("${").and_then(|s| s.strip_suffix('}')).unwrap_or_default();
                    self.substitutions(inner, depth + 1)?;
                }
            }
            WordPiece::CommandSubstitution(script) => {
                word.computed = true;
                word.text.push_str(source);
                self.script(script, depth + 1)?;
            }
            WordPiece::BackquotedCommandSubstitution(script) => {
                word.computed = true;
                word.text.push_str(source);
                self.script(&unescape_backquoted(script), depth + 1)?;
            }
            WordPiece::ArithmeticExpression(expression) => {
                word.computed = true;
                word.text.push_str(source);
                // `$(( a[$(curl …)] ))` runs curl.
                if expression.value.contains(['`', '(']) {
                    self.substitutions(&expression.value, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

/// The delimiter `with_here_document_delimiters` gives a here-document operator that has none.
const MISSING_DELIMITER: &str = "tollgate_missing_delimiter";

/// `text` with `MISSING_DELIMITER` after each `<<` or `<<-` whose delimiter is empty: followed (after blanks) by an
/// operator or the end, or by a word that is empty once its quotes are removed (`<<''`); `None` when there is no
/// such `<<`. `Syntax` when a delimiter word holds an expansion (`<<$(x`). Inside quotes, comments or here-document bodies the text changes too, which only matters to
/// the tokenizer's verdict, not to what is split.
fn with_here_document_delimiters(text: &str) -> Result<Option<String>, Unreadable> {
    let mut delimited = String::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find("<<") {
        let start = at + found;
        // `<<<` is a here-string, which takes any word.
        if text[start..].starts_with("<<<") {
            at = start + 3;
            continue;
        }
        let operator = if text[start..].starts_with("<<-") { 3 } else { 2 };
        let rest = text[start + operator..].trim_start_matches([' ', '\t']);
        let end = text.len() - rest.len();
        let word = delimiter_word(rest).ok_or(Unreadable::Syntax)?;
        // No word, or one that is empty once its quotes are removed (`<<''`).
        if word.chars().all(|c| matches!(c, '\'' | '"' | '$' | '\\')) {
            delimited.push_str(&text[copied..end]);
            delimited.push_str(MISSING_DELIMITER);
            copied = end;
        }
        at = end;
    }
    Ok((copied > 0).then(|| delimited + &text[copied..]))
}

/// The here-document delimiter word `text` starts with, up to an unquoted blank or operator character, quotes kept;
/// `None` when it holds `$(`, `${`, `$[` or a backtick (bash takes those literally, the tokenizer does not: see
/// `Walker::script`).
fn delimiter_word(text: &str) -> Option<&str> {
    let mut quote = None;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (_, '`') => return None,
            (_, '$') if matches!(chars.peek(), Some((_, '(' | '{' | '['))) => return None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ' ' | '\t' | '\n' | '(' | ')' | '<' | '>' | ';' | '&' | '|') => return Some(&text[..at]),
            (None, _) => {}
        }
    }
    Some(text)
}

/// A token that opens a compound command (or, in argument position, only looks like it: counted all the same).
fn opens_compound_command(token: &Token) -> bool {
    match token {
        Token::Operator(operator, _) => operator.starts_with('('),
        Token::Word(word, _) => {
            matches!(word.as_str(), "{" | "if" | "while" | "until" | "for" | "case" | "select" | "[[" | "coproc")
        }
    }
}

/// `/usr/bin/curl` → `curl`; `C:\\Windows\\System32\\curl.exe` → `curl` (Git Bash on Windows runs both).
fn program_name(program: &str) -> &str {
    let name = program.rsplit(['/', '\\']).next().unwrap_or(program);
    match name.len().checked_sub(4) {
        Some(stem) if name.is_char_boundary(stem) && name[stem..].eq_ignore_ascii_case(".exe") => &name[..stem],
        _ => name,
    }
}

/// The standard streams and `/dev/null`: redirecting into them writes no file.
fn is_stream(target: &str) -> bool {
    matches!(target, "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/tty") || target.starts_with("/dev/fd/")
}

/// What a program runs of its arguments.
enum Runs {
    Nothing,
    /// The command that starts at this argument (`sudo -u x CMD …`).
    Command(usize),
    /// The commands in these ranges of arguments (`find … -exec CMD … ;`).
    Commands(Vec<std::ops::Range<usize>>),
    /// The script in this argument (`bash -c SCRIPT`).
    Script(usize),
    /// The arguments from this one on, joined as a script (`eval …`, `watch …`).
    Arguments(usize),
    /// The script on its standard input (`bash` with no script file).
    Stdin,
}

/// Options of a wrapper: which take a value (as the next word, or attached).
struct Options {
    /// Short options taking a value (`u` for `-u root`, `-uroot`).
    short_with_value: &'static str,
    /// Long options taking a value (`--user` for `--user root`; `--user=root` needs no entry).
    long_with_value: &'static [&'static str],
    /// `NAME=VALUE` words before the command are skipped (`env`, `sudo`).
    assignments: bool,
}

/// The index of the first argument after the options (and assignments) of a wrapper; `None` when there is none.
fn after_options(arguments: &[Word], options: &Options) -> Option<usize> {
    let mut index = 0;
    while let Some(argument) = arguments.get(index) {
        let text = argument.text.as_str();
        if text == "--" {
            return (index + 1 < arguments.len()).then_some(index + 1);
        }
        // `env -` is `env -i`.
        if text == "-" {
            index += 1;
            continue;
        }
        if let Some(long) = text.strip_prefix("--") {
            index += if options.long_with_value.contains(&long) { 2 } else { 1 };
            continue;
        }
        if let Some(cluster) = text.strip_prefix('-').filter(|cluster| !cluster.is_empty()) {
            // `-abc`: a value-taking option takes the rest of the cluster, or the next word when it ends it.
            let mut skip = 1;
            for (at, option) in cluster.char_indices() {
                if options.short_with_value.contains(option) {
                    if at + option.len_utf8() == cluster.len() {
                        skip = 2;
                    }
                    break;
                }
            }
            index += skip;
            continue;
        }
        if options.assignments && text.split_once('=').is_some_and(|(name, _)| is_name(name)) {
            index += 1;
            continue;
        }
        return Some(index);
    }
    None
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const SHELLS: [&str; 7] = ["bash", "sh", "dash", "zsh", "ksh", "mksh", "ash"];

/// What `program` runs of `arguments`.
fn runs(program: &str, arguments: &[Word]) -> Runs {
    let wrapper = |options: Options| after_options(arguments, &options).map_or(Runs::Nothing, Runs::Command);
    let plain = |short_with_value| Options { short_with_value, long_with_value: &[], assignments: false };
    match program {
        "sudo" => wrapper(Options {
            short_with_value: "ughprtCDUT",
            long_with_value: &[
                "user",
                "group",
                "host",
                "prompt",
                "role",
                "type",
                "close-from",
                "chdir",
                "other-user",
                "command-timeout",
            ],
            assignments: true,
        }),
        "doas" => wrapper(plain("uC")),
        "env" => {
            // `env -S 'curl x'` splits its value into a command line.
            if let Some(index) =
                arguments.iter().position(|argument| argument.text == "-S" || argument.text == "--split-string")
            {
                if index + 1 < arguments.len() {
                    return Runs::Script(index + 1);
                }
            }
            wrapper(Options {
                short_with_value: "uCS",
                long_with_value: &["unset", "chdir", "split-string"],
                assignments: true,
            })
        }
        // `busybox wget …` and `toybox wget …` run the applet named first.
        "command" | "nohup" | "setsid" | "busybox" | "toybox" => wrapper(plain("")),
        "stdbuf" => wrapper(Options {
            short_with_value: "ioe",
            long_with_value: &["input", "output", "error"],
            assignments: false,
        }),
        "ionice" => wrapper(Options {
            short_with_value: "cnp",
            long_with_value: &["class", "classdata", "pid"],
            assignments: false,
        }),
        "exec" => wrapper(plain("a")),
        "time" => {
            wrapper(Options { short_with_value: "of", long_with_value: &["output", "format"], assignments: false })
        }
        "nice" => wrapper(Options { short_with_value: "n", long_with_value: &["adjustment"], assignments: false }),
        "xargs" => wrapper(Options {
            short_with_value: "adEILnPs",
            long_with_value: &[
                "arg-file",
                "delimiter",
                "eof",
                "replace",
                "max-lines",
                "max-args",
                "max-procs",
                "max-chars",
                "process-slot-var",
            ],
            assignments: false,
        }),
        "timeout" => {
            let options =
                Options { short_with_value: "ks", long_with_value: &["kill-after", "signal"], assignments: false };
            // The first operand is the duration; the command follows it.
            match after_options(arguments, &options) {
                Some(duration) if duration + 1 < arguments.len() => Runs::Command(duration + 1),
                _ => Runs::Nothing,
            }
        }
        "eval" => Runs::Arguments(0),
        // `watch CMD…` runs `sh -c "CMD…"`.
        "watch" => after_options(arguments, &plain("n")).map_or(Runs::Nothing, Runs::Arguments),
        // `su -c SCRIPT user`, `runuser -c SCRIPT user`.
        "su" | "runuser" => arguments
            .iter()
            .position(|argument| matches!(argument.text.as_str(), "-c" | "--command"))
            .filter(|index| index + 1 < arguments.len())
            .map_or(Runs::Nothing, |index| Runs::Script(index + 1)),
        "find" => {
            let mut ranges = Vec::new();
            let mut index = 0;
            while index < arguments.len() {
                if matches!(arguments[index].text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
                    let start = index + 1;
                    let end = (start..arguments.len())
                        .find(|&at| matches!(arguments[at].text.as_str(), ";" | "+"))
                        .unwrap_or(arguments.len());
                    if start < end {
                        ranges.push(start..end);
                    }
                    index = end;
                }
                index += 1;
            }
            if ranges.is_empty() {
                Runs::Nothing
            } else {
                Runs::Commands(ranges)
            }
        }
        shell if SHELLS.contains(&shell) => shell_runs(arguments),
        _ => Runs::Nothing,
    }
}

/// What a shell runs: the string after `-c`, a script file (not read here), or its standard input.
fn shell_runs(arguments: &[Word]) -> Runs {
    let mut command_string = false;
    let mut from_stdin = false;
    let mut index = 0;
    while let Some(argument) = arguments.get(index) {
        let text = argument.text.as_str();
        if text == "--" || text == "-" {
            index += 1;
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            index += if matches!(long, "rcfile" | "init-file") { 2 } else { 1 };
            continue;
        }
        let Some(cluster) = text.strip_prefix('-').or_else(|| text.strip_prefix('+')) else { break };
        command_string |= text.starts_with('-') && cluster.contains('c');
        from_stdin |= text.starts_with('-') && cluster.contains('s');
        // `-o pipefail`, `-O extglob`: the option name is the next word.
        index += if cluster.contains(['o', 'O']) { 2 } else { 1 };
    }
    match (command_string, index < arguments.len()) {
        (true, true) => Runs::Script(index),
        (true, false) => Runs::Nothing,
        (false, false) => Runs::Stdin,
        (false, true) if from_stdin => Runs::Stdin,
        (false, true) => Runs::Nothing,
    }
}

/// The text between backticks as the shell runs it: `\\` is `\`, `\$` is `$` (`` \` `` was already undone).
fn unescape_backquoted(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek().filter(|next| matches!(next, '\\' | '$')) {
                out.push(next);
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// A here-document body as a double-quoted word, so that the word parser finds its expansions: in a body, `"` is an
/// ordinary character, and a backslash escapes only `$`, `` ` ``, `\` and a newline.
fn as_double_quoted(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 8);
    out.push('"');
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ ('$' | '`' | '\\' | '\n')) => {
                    out.push('\\');
                    out.push(next);
                    chars.next();
                }
                _ => out.push_str("\\\\"),
            },
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of `$'…'` with its escapes decoded (`$'\x63url'` is `curl`).
fn ansi_c(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(escape) = chars.next() else {
            out.push('\\');
            break;
        };
        let mut number = |radix: u32, max: usize, first: Option<char>| {
            let mut digits: String = first.into_iter().collect();
            while digits.len() < max {
                match chars.peek() {
                    Some(d) if d.is_digit(radix) => {
                        digits.push(*d);
                        chars.next();
                    }
                    _ => break,
                }
            }
            u32::from_str_radix(&digits, radix).ok().and_then(char::from_u32)
        };
        let decoded = match escape {
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'e' | 'E' => Some('\x1b'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            '\\' | '\'' | '"' | '?' => Some(escape),
            '0'..='7' => number(8, 3, Some(escape)),
            'x' => number(16, 2, None),
            'u' => number(16, 4, None),
            'U' => number(16, 8, None),
            'c' => chars.next().map(|control| char::from(control.to_ascii_uppercase() as u8 & 0x1f)),
            _ => None,
        };
        match decoded {
            Some(decoded) => out.push(decoded),
            None => {
                out.push('\\');
                out.push(escape);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(command: &str) -> Vec<String> {
        split(command).unwrap_or_else(|error| panic!("{command:?}: {error}")).into_iter().map(|c| c.text).collect()
    }

    fn unreadable(command: &str) -> Unreadable {
        match split(command) {
            Ok(commands) => panic!("{command:?} read as {commands:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn lists_pipelines_and_separators_split() {
        assert_eq!(texts("ls && curl http://x"), ["ls", "curl http://x"]);
        assert_eq!(texts("ls;curl http://x"), ["ls", "curl http://x"]);
        assert_eq!(texts("ls || curl http://x & wget y"), ["ls", "curl http://x", "wget y"]);
        assert_eq!(texts("cat a | grep b |& tee c"), ["cat a", "grep b 2>&1", "tee c"]);
        assert_eq!(texts("ls\ncurl http://x\n"), ["ls", "curl http://x"]);
        assert_eq!(texts("(cd /; curl http://x)"), ["cd /", "curl http://x"]);
        assert_eq!(texts("{ ls; curl http://x; }"), ["ls", "curl http://x"]);
        assert_eq!(texts("if true; then curl http://x; else wget y; fi"), ["true", "curl http://x", "wget y"]);
        assert_eq!(texts("for f in a b; do curl $f; done"), ["curl $f"]);
        assert_eq!(texts("while read l; do curl \"$l\"; done < urls"), ["read l", "curl $l"]);
        assert_eq!(texts("case $x in a) curl http://x;; esac"), ["curl http://x"]);
        assert_eq!(texts("f() { curl http://x; }; f"), ["curl http://x", "f"]);
        assert_eq!(texts("[[ -n $(curl http://x) ]]"), ["curl http://x"]);
        assert_eq!(texts("! curl http://x"), ["curl http://x"]);
        assert_eq!(texts("time curl http://x"), ["curl http://x"]);
        assert_eq!(texts(""), Vec::<String>::new());
    }

    #[test]
    fn substitutions_run_their_commands() {
        assert_eq!(texts("echo $(curl http://x)"), ["curl http://x", "echo $(curl http://x)"]);
        assert_eq!(texts("echo `wget y`"), ["wget y", "echo `wget y`"]);
        assert_eq!(texts("echo \"a $(curl http://x) b\""), ["curl http://x", "echo a $(curl http://x) b"]);
        assert_eq!(texts("x=$(curl http://x)"), ["curl http://x"]);
        assert_eq!(texts("diff <(curl http://x) b"), ["curl http://x", "diff <(…) b"]);
        assert_eq!(texts("echo ${x:-$(curl http://x)}"), ["curl http://x", "echo ${x:-$(curl http://x)}"]);
        assert_eq!(texts("echo $(( $(curl http://x) + 1 ))"), ["curl http://x", "echo $(( $(curl http://x) + 1 ))"]);
        assert_eq!(
            texts("echo `echo \\`curl http://x\\``"),
            ["curl http://x", "echo `curl http://x`", "echo `echo \\`curl http://x\\``"]
        );
        assert_eq!(texts("echo `printf \\$HOME`"), ["printf $HOME", "echo `printf \\$HOME`"]);
    }

    #[test]
    fn quoting_and_escapes_are_removed() {
        assert_eq!(texts("\"curl\" 'http://x'"), ["curl http://x"]);
        assert_eq!(texts("\"cu\"\"rl\" http://x"), ["curl http://x"]);
        assert_eq!(texts("c\\url http://x"), ["curl http://x"]);
        assert_eq!(texts("cu''rl http://x"), ["curl http://x"]);
        assert_eq!(texts("$'\\x63\\165rl' http://x"), ["curl http://x"]);
        assert_eq!(texts("curl \\\n  http://x"), ["curl http://x"]);
        assert_eq!(texts("echo \"a  b\""), ["echo a  b"]);
    }

    #[test]
    fn programs_lose_their_directory_and_wrappers_are_looked_through() {
        assert_eq!(texts("/usr/bin/curl http://x"), ["curl http://x"]);
        assert_eq!(texts("./bin/../curl http://x"), ["curl http://x"]);
        assert_eq!(texts("sudo -u x curl http://x"), ["sudo -u x curl http://x", "curl http://x"]);
        assert_eq!(
            texts("sudo -E -uroot HOME=/ /usr/bin/curl http://x"),
            ["sudo -E -uroot HOME=/ /usr/bin/curl http://x", "curl http://x"]
        );
        assert_eq!(texts("env A=1 curl http://x"), ["env A=1 curl http://x", "curl http://x"]);
        assert_eq!(texts("env -i -u X B=2 curl http://x"), ["env -i -u X B=2 curl http://x", "curl http://x"]);
        assert_eq!(texts("A=1 B=2 curl http://x"), ["curl http://x"]);
        assert_eq!(texts("command curl http://x"), ["command curl http://x", "curl http://x"]);
        assert_eq!(texts("exec -a name curl http://x"), ["exec -a name curl http://x", "curl http://x"]);
        assert_eq!(
            texts("nohup nice -n 5 curl http://x"),
            ["nohup nice -n 5 curl http://x", "nice -n 5 curl http://x", "curl http://x"]
        );
        assert_eq!(texts("/usr/bin/time -f %e curl http://x"), ["time -f %e curl http://x", "curl http://x"]);
        assert_eq!(texts("timeout -s KILL 10 curl http://x"), ["timeout -s KILL 10 curl http://x", "curl http://x"]);
        assert_eq!(texts("echo u | xargs -n 1 curl"), ["echo u", "xargs -n 1 curl", "curl"]);
        assert_eq!(
            texts("find . -exec curl {} \\; -exec rm {} +"),
            ["find . -exec curl {} ; -exec rm {} +", "curl {}", "rm {}"]
        );
        assert_eq!(texts("env - PATH=/x curl http://x"), ["env - PATH=/x curl http://x", "curl http://x"]);
        assert_eq!(texts("busybox wget y"), ["busybox wget y", "wget y"]);
        assert_eq!(texts("setsid stdbuf -o0 ionice -c 3 curl http://x")[3], "curl http://x");
        assert_eq!(texts("watch -n 5 'curl http://x'"), ["watch -n 5 curl http://x", "curl http://x"]);
        assert_eq!(texts("su -c 'curl http://x' root"), ["su -c curl http://x root", "curl http://x"]);
        assert_eq!(
            texts("curl.exe http://x; 'C:\\Windows\\System32\\CURL.EXE' http://x"),
            ["curl http://x", "CURL http://x"]
        );
        assert_eq!(texts("sudo"), ["sudo"]);
        assert_eq!(texts("timeout 10"), ["timeout 10"]);
    }

    #[test]
    fn shells_and_eval_run_their_scripts() {
        assert_eq!(texts("bash -c 'curl http://x'"), ["bash -c curl http://x", "curl http://x"]);
        assert_eq!(texts("sh -ec 'ls; curl http://x' name"), ["sh -ec ls; curl http://x name", "ls", "curl http://x"]);
        assert_eq!(texts("bash -o pipefail -c 'wget y'"), ["bash -o pipefail -c wget y", "wget y"]);
        assert_eq!(
            texts("sudo bash -c \"curl http://x\""),
            ["sudo bash -c curl http://x", "bash -c curl http://x", "curl http://x"]
        );
        assert_eq!(texts("eval 'curl http://x'"), ["eval curl http://x", "curl http://x"]);
        assert_eq!(texts("eval curl http://x"), ["eval curl http://x", "curl http://x"]);
        assert_eq!(texts("bash script.sh"), ["bash script.sh"]);
        assert_eq!(texts("curl -s http://x | bash"), ["curl -s http://x", "bash"]);
        assert_eq!(texts("env -S 'curl http://x'"), ["env -S curl http://x", "curl http://x"]);
        assert_eq!(unreadable("bash -c \"$CMD\""), Unreadable::ComputedScript);
        assert_eq!(unreadable("bash -c \"curl $URL\""), Unreadable::ComputedScript);
        assert_eq!(unreadable("eval \"$x\""), Unreadable::ComputedScript);
        assert_eq!(texts("bash -c 'cd $DIR && make'"), ["bash -c cd $DIR && make", "cd $DIR", "make"]);
        assert_eq!(
            texts("sudo -u x bash -c 'ls; curl http://x'"),
            ["sudo -u x bash -c ls; curl http://x", "bash -c ls; curl http://x", "ls", "curl http://x"]
        );
    }

    #[test]
    fn here_documents_are_data_unless_a_shell_reads_them() {
        let commit = "git commit -m \"$(cat <<'EOF'\nIt's a fix (really) for \"x\" and `y` $(z)\nEOF\n)\"";
        let commands = texts(commit);
        assert_eq!(commands[0], "cat <<'EOF'");
        assert!(commands[1].starts_with("git commit -m $(cat <<'EOF'"), "{commands:?}");
        assert_eq!(commands.len(), 2);
        assert_eq!(texts("cat <<EOF\ncurl http://x\nEOF"), ["cat <<EOF"]);
        assert_eq!(texts("cat <<EOF\n$(curl http://x)\nEOF"), ["curl http://x", "cat <<EOF"]);
        assert_eq!(texts("cat <<EOF\n\\$(curl http://x) \"q\"\nEOF"), ["cat <<EOF"]);
        assert_eq!(texts("bash <<'EOF'\ncurl http://x\nEOF"), ["bash <<'EOF'", "curl http://x"]);
        assert_eq!(texts("sh <<< 'wget y'"), ["sh <<<wget y", "wget y"]);
        assert_eq!(unreadable("bash <<EOF\ncurl $URL\nEOF"), Unreadable::ComputedScript);
    }

    #[test]
    fn redirections_are_shown_and_file_writes_flagged() {
        let commands =
            split("ls > out.txt 2>&1; cat a >/dev/null; echo x >> /etc/hosts; > /tmp/f; { ls; } > g").unwrap();
        let shown: Vec<(&str, bool)> = commands.iter().map(|c| (c.text.as_str(), c.writes_file)).collect();
        assert_eq!(
            shown,
            [
                ("ls >out.txt 2>&1", true),
                ("cat a >/dev/null", false),
                ("echo x >>/etc/hosts", true),
                (">/tmp/f", true),
                ("ls", false),
                (">g", true)
            ]
        );
        assert!(split("ls &> log").unwrap()[0].writes_file);
        assert!(split("ls >& log").unwrap()[0].writes_file);
        assert!(!split("ls 2>&1 >&2").unwrap()[0].writes_file);
        assert!(!split("cat < /etc/passwd").unwrap()[0].writes_file);
        assert_eq!(texts("exec 3<>/dev/tcp/evil.example/80"), ["exec 3<>/dev/tcp/evil.example/80"]);
    }

    #[test]
    fn computed_programs_and_broken_syntax_cannot_be_read() {
        assert_eq!(unreadable("$c http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("${c} http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("$(echo curl) http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("`echo curl` http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("\"$c\" http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("/usr/bin/cur? http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("{curl,http://x}"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("sudo $c http://x"), Unreadable::ComputedProgram);
        assert_eq!(unreadable("echo 'unterminated"), Unreadable::Syntax);
        assert_eq!(unreadable("echo \"unterminated"), Unreadable::Syntax);
        assert_eq!(unreadable("if true; then ls"), Unreadable::Syntax);
        assert_eq!(unreadable("echo $(ls"), Unreadable::Syntax);
        assert_eq!(unreadable(&"a".repeat(MAX_COMMAND_BYTES + 1)), Unreadable::TooLong);
        // Arguments may be computed; only the program must be known.
        assert_eq!(texts("curl $URL \"$(cat f)\""), ["cat f", "curl $URL $(cat f)"]);
        assert_eq!(texts("ls *.rs {a,b}"), ["ls *.rs {a,b}"]);
    }

    #[test]
    fn deep_or_large_commands_are_refused_before_they_exhaust_the_stack() {
        let nested = |open: &str, close: &str, n: usize| format!("{}ls{}", open.repeat(n), close.repeat(n));
        assert_eq!(unreadable(&nested("$(", ")", 1000)), Unreadable::TooComplex);
        assert_eq!(unreadable(&nested("echo ${x:-", "}", 1000)), Unreadable::TooComplex);
        assert_eq!(unreadable(&nested("{ ", "; }", 1000)), Unreadable::TooComplex);
        assert_eq!(unreadable(&nested("if true; then ", "; fi", 1000)), Unreadable::TooComplex);
        assert_eq!(unreadable(&nested("( ", " )", 1000)), Unreadable::TooComplex);
        // (A hundred `eval`s would list more text than `MAX_OUTPUT_FACTOR` allows before they reach the depth.)
        assert_eq!(unreadable(&format!("{}ls", "eval ".repeat(MAX_DEPTH + 2))), Unreadable::TooDeep);
        assert_eq!(unreadable(&format!("{}ls", "eval ".repeat(100))), Unreadable::TooComplex);
        assert_eq!(unreadable(&nested("{ ", "; }", MAX_DEPTH + 1)), Unreadable::TooDeep);
        assert_eq!(unreadable(&"ls;".repeat(MAX_SIMPLE_COMMANDS + 1)), Unreadable::TooComplex);
        // At the bounds, on a small stack: the parser gets a larger one, and nothing overflows.
        let at_bounds = [
            nested("echo \"$(", ")\"", MAX_EXPANSIONS),
            nested("{ ", "; }", MAX_COMPOUND_COMMANDS),
            nested("if true; then ", "; fi", MAX_COMPOUND_COMMANDS),
            nested("case x in a) ", ";; esac", MAX_COMPOUND_COMMANDS),
        ];
        let results = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || at_bounds.iter().map(|command| split(command).map(|c| c.len())).collect::<Vec<_>>())
            .expect("spawn")
            .join()
            .expect("no stack overflow");
        assert!(results.iter().all(|result| matches!(result, Ok(_) | Err(Unreadable::TooDeep))), "{results:?}");
    }

    #[test]
    fn here_document_operators_without_a_delimiter_are_refused_not_tokenized_forever() {
        // Each of these made the tokenizer queue tokens until memory ran out.
        for command in [
            "$(<< (${",
            "$(<< ;${",
            "$(<< ($(",
            "$(<<- |${",
            "$(<< <${",
            "echo $(cat << )${x}",
            "$[<< ;${",
            "<<$( &#",
            "<<x$( &#)",
            "cat <<\"$( &#",
            "cat <<'a b'$( &#",
            "<<''&$(",
            "cat <<\"\" ;$(",
        ] {
            assert_eq!(unreadable(command), Unreadable::Syntax, "{command:?}");
        }
        assert_eq!(unreadable("cat << ;"), Unreadable::Syntax);
        assert_eq!(unreadable(&format!("echo {MISSING_DELIMITER} $(cat << ;${{")), Unreadable::Syntax);
        // The same characters in quotes, here-document bodies and here-strings are read as before.
        assert_eq!(texts("echo 'a << (b)' \"c << ;\" ${x}"), ["echo a << (b) c << ; ${x}"]);
        let commit = "git commit -m \"$(cat <<'EOF'\nstd::cout << (a + b);\nEOF\n)\"";
        assert_eq!(texts(commit)[0], "cat <<'EOF'");
        assert_eq!(texts("bash <<< 'ls' | cat <<<x"), ["bash <<<ls", "ls", "cat <<<x"]);
    }

    #[test]
    fn wrappers_cannot_multiply_the_command_line() {
        // A thousand wrappers would list a thousand commands of up to 5 KB each: 2.5 MB from 5 KB.
        let wrapped = format!("{}ls", "sudo ".repeat(1000));
        assert_eq!(unreadable(&wrapped), Unreadable::TooComplex);
        let wrapped = format!("{}ls", "sudo ".repeat(20));
        assert_eq!(texts(&wrapped).len(), 21);
    }

    /// The texts of `command`'s simple commands together, in bytes (0 when it is refused).
    fn output_bytes(command: &str) -> usize {
        split(command).map_or(0, |commands| commands.iter().map(|command| command.text.len()).sum())
    }

    proptest::proptest! {
        /// Whatever the text, its simple commands together are within a small multiple of it.
        #[test]
        fn split_output_is_bounded_by_its_input(parts in proptest::collection::vec(proptest::sample::select(vec![
            " ", ";", "&&", "|", "\n", "(", ")", "{ ", "; }", "$(", "`", "'", "\"", "\\", "${", "}", "<<", "<<<",
            "EOF", "x", "curl", "sudo ", "bash ", "-c ", "eval ", "env ", "nice ", "time ", "find . -exec ", "\\; ",
        ]), 0..200)) {
            let command: String = parts.concat();
            let bytes = output_bytes(&command);
            proptest::prop_assert!(bytes <= MAX_OUTPUT_FACTOR * command.len() + MIN_OUTPUT_BYTES, "{command:?}: {bytes}");
        }

        /// Any text is split or refused, never a panic: shell punctuation, quotes, keywords and wrappers mixed.
        #[test]
        fn any_text_is_split_or_refused(parts in proptest::collection::vec(proptest::sample::select(vec![
            " ", ";", "&&", "||", "|", "&", "\n", "(", ")", "{", "}", "$(", "`", "'", "\"", "\\", "$", "${", "}",
            "<<", "<<<", ">", ">&", "2>&1", "EOF", "if", "then", "fi", "for", "in", "do", "done", "case", "esac",
            ";;", "[[", "]]", "((", "))", "$((", "=", "x", "curl", "sudo", "bash", "-c", "eval", "env", "A=1",
            "*", "?", "[", "]", "~", "#", "!", "$'\\x", "-exec", "find", "\\;",
        ]), 0..40)) {
            let command: String = parts.concat();
            let _ = split(&command);
        }
    }

    #[test]
    fn ansi_c_escapes_decode() {
        assert_eq!(ansi_c("a\\tb\\n\\x41\\101\\u00e9\\cA\\q\\"), "a\tb\nAA\u{e9}\u{1}\\q\\");
    }
}
