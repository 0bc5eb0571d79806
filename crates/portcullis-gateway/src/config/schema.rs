//! A small schema walker over a parsed `toml::Table`.
//!
//! The walker never stops at the first problem: every accessor records what is wrong under
//! the full key path (`route[2].path`, `server.trusted_proxies[1]`) and carries on, so one
//! run of `check-config` shows every error. The keys a section asks for are its schema:
//! [`Section::finish`] reports any other key as unknown and lists the expected ones.

use std::ops::RangeInclusive;

use toml::{Table, Value};

use super::ConfigError;

/// The errors found so far.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    list: Vec<ConfigError>,
}

impl Errors {
    pub(crate) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<ConfigError> {
        self.list
    }
}

/// How a value's type is named in error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The error reason for a value of the wrong type.
pub(crate) fn expected(what: &str, found: &Value) -> String {
    format!("expected {what}, found {}", type_name(found))
}

/// One string of a list, with its key path (`server.allowed_hosts[0]`).
#[derive(Debug, Clone)]
pub(crate) struct Item<'t> {
    pub(crate) key: String,
    pub(crate) value: &'t str,
}

/// One table of the file and the keys asked of it so far.
pub(crate) struct Section<'t> {
    path: String,
    table: &'t Table,
    known: Vec<&'static str>,
}

impl<'t> Section<'t> {
    /// The file's top level.
    pub(crate) fn root(table: &'t Table) -> Self {
        Section::at(String::new(), table)
    }

    /// A table at `path`.
    pub(crate) fn at(path: String, table: &'t Table) -> Self {
        Section {
            path,
            table,
            known: Vec::new(),
        }
    }

    /// The underlying table.
    pub(crate) fn table(&self) -> &'t Table {
        self.table
    }

    /// This section's own key path (`""` at the top level).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The full key path of `name` in this section.
    pub(crate) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The raw value of `name`, if present; `name` becomes part of the schema.
    pub(crate) fn value(&mut self, name: &'static str) -> Option<&'t Value> {
        if !self.known.contains(&name) {
            self.known.push(name);
        }
        self.table.get(name)
    }

    /// True when `name` is present (and part of the schema).
    pub(crate) fn has(&mut self, name: &'static str) -> bool {
        self.value(name).is_some()
    }

    /// A string value.
    pub(crate) fn string(&mut self, name: &'static str, errs: &mut Errors) -> Option<&'t str> {
        match self.value(name)? {
            Value::String(s) => Some(s),
            other => {
                errs.push(self.key(name), expected("a string", other));
                None
            }
        }
    }

    /// A required string value.
    pub(crate) fn required_string(
        &mut self,
        name: &'static str,
        errs: &mut Errors,
    ) -> Option<&'t str> {
        if !self.has(name) {
            errs.push(self.key(name), "required");
            return None;
        }
        self.string(name, errs)
    }

    /// A string turned into a `T` by `parse`, whose error becomes the reason.
    pub(crate) fn parsed<T>(
        &mut self,
        name: &'static str,
        errs: &mut Errors,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(name, errs)?;
        match parse(s) {
            Ok(v) => Some(v),
            Err(reason) => {
                errs.push(self.key(name), reason);
                None
            }
        }
    }

    /// A boolean value.
    pub(crate) fn boolean(&mut self, name: &'static str, errs: &mut Errors) -> Option<bool> {
        match self.value(name)? {
            Value::Boolean(b) => Some(*b),
            other => {
                errs.push(self.key(name), expected("true or false", other));
                None
            }
        }
    }

    /// An integer within `range`.
    pub(crate) fn integer(
        &mut self,
        name: &'static str,
        errs: &mut Errors,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        match self.value(name)? {
            Value::Integer(i) if range.contains(i) => Some(*i),
            Value::Integer(i) => {
                errs.push(
                    self.key(name),
                    format!("{i} is out of range ({}..={})", range.start(), range.end()),
                );
                None
            }
            other => {
                errs.push(self.key(name), expected("an integer", other));
                None
            }
        }
    }

    /// A list of strings; items of another type are reported and skipped.
    pub(crate) fn strings(
        &mut self,
        name: &'static str,
        errs: &mut Errors,
    ) -> Option<Vec<Item<'t>>> {
        let key = self.key(name);
        strings_of(&key, self.value(name)?, errs)
    }

    /// A sub-table, as a section of its own.
    pub(crate) fn section(&mut self, name: &'static str, errs: &mut Errors) -> Option<Section<'t>> {
        match self.value(name)? {
            Value::Table(t) => Some(Section::at(self.key(name), t)),
            other => {
                errs.push(self.key(name), expected("a table", other));
                None
            }
        }
    }

    /// An array of tables (`[[route]]`), each as a section at `name[i]`.
    pub(crate) fn sections(&mut self, name: &'static str, errs: &mut Errors) -> Vec<Section<'t>> {
        let key = self.key(name);
        match self.value(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::Table(t) => Some(Section::at(format!("{key}[{i}]"), t)),
                    other => {
                        errs.push(format!("{key}[{i}]"), expected("a table", other));
                        None
                    }
                })
                .collect(),
            Some(other) => {
                errs.push(
                    key,
                    expected(&format!("an array of tables ([[{name}]])"), other),
                );
                Vec::new()
            }
        }
    }

    /// The section's keys in file order, for tables whose keys are data (`[headers.set]`).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&'t String, &'t Value)> {
        self.table.iter()
    }

    /// Reports every key this section did not ask for.
    pub(crate) fn finish(self, errs: &mut Errors) {
        for name in self.table.keys() {
            if !self.known.contains(&name.as_str()) {
                errs.push(
                    self.key(name),
                    format!("unknown key; expected one of {}", self.known.join(", ")),
                );
            }
        }
    }
}

/// A list of strings at `key`; items of another type are reported and skipped.
pub(crate) fn strings_of<'t>(key: &str, v: &'t Value, errs: &mut Errors) -> Option<Vec<Item<'t>>> {
    match v {
        Value::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::String(s) => Some(Item {
                        key: format!("{key}[{i}]"),
                        value: s,
                    }),
                    other => {
                        errs.push(format!("{key}[{i}]"), expected("a string", other));
                        None
                    }
                })
                .collect(),
        ),
        other => {
            errs.push(key, expected("an array of strings", other));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_list_the_expected_ones() {
        let t: Table = "a = 1\nb = \"x\"\nzz = true".parse().unwrap();
        let mut errs = Errors::default();
        let mut s = Section::at("server".into(), &t);
        assert_eq!(s.integer("a", &mut errs, 0..=5), Some(1));
        assert_eq!(s.string("b", &mut errs), Some("x"));
        s.finish(&mut errs);
        let v = errs.into_vec();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "server.zz");
        assert_eq!(v[0].reason, "unknown key; expected one of a, b");
    }

    #[test]
    fn wrong_types_are_reported_with_the_item_path() {
        let t: Table = "list = [\"a\", 2]\nn = \"x\"".parse().unwrap();
        let mut errs = Errors::default();
        let mut s = Section::root(&t);
        assert_eq!(s.strings("list", &mut errs).unwrap().len(), 1);
        assert_eq!(s.integer("n", &mut errs, 0..=1), None);
        let v = errs.into_vec();
        assert_eq!(v[0].key, "list[1]");
        assert_eq!(v[0].reason, "expected a string, found an integer");
        assert_eq!(v[1].key, "n");
    }
}
