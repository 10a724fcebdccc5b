//! Where a projection keeps its read model, so a blue/green rebuild can build a new version
//! beside it and swap the two.

use crate::schema::check_identifier;
use crate::{PgError, SchemaName};

/// The tables a projection owns, all in one schema.
///
/// A blue/green rebuild builds the next version as a second instance of the projection writing
/// the same table names into another schema, then moves those tables into the live schema in
/// one transaction, in place of the old ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadModel {
    schema: SchemaName,
    tables: Vec<String>,
}

impl ReadModel {
    /// The tables `tables` in `schema`. Names must be plain identifiers (lowercase ASCII
    /// letters, digits and `_`, at most 63 bytes): they go into DDL text.
    pub fn new(
        schema: SchemaName,
        tables: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, PgError> {
        let mut names = Vec::new();
        for table in tables {
            let name = table.into();
            if let Err(reason) = check_identifier(&name, 63) {
                return Err(PgError::InvalidTableName { name, reason });
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(Self {
            schema,
            tables: names,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// The table names, unqualified.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Each table, schema-qualified and quoted, comma-separated.
    pub(crate) fn qualified_list(&self) -> String {
        self.tables
            .iter()
            .map(|t| format!("{}.\"{t}\"", self.schema.quoted()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `other` holds the same tables (in any order) in another schema: what a next
    /// version must be to replace this one.
    pub(crate) fn can_be_replaced_by(&self, other: &ReadModel) -> Result<(), String> {
        if other.schema == self.schema {
            return Err(format!(
                "the next version must be built in another schema than the live one ({})",
                self.schema
            ));
        }
        let mut live = self.tables.clone();
        let mut next = other.tables.clone();
        live.sort();
        next.sort();
        if live != next || live.is_empty() {
            return Err(format!(
                "the next version must keep the same, non-empty, set of tables: live {live:?}, next {next:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(schema: &str, tables: &[&str]) -> ReadModel {
        ReadModel::new(SchemaName::new(schema).unwrap(), tables.iter().copied()).unwrap()
    }

    #[test]
    fn table_names_must_be_plain_identifiers() {
        let schema = SchemaName::default();
        assert!(ReadModel::new(schema.clone(), ["balances", "b2"]).is_ok());
        for bad in ["", "Balances", "a\"b", "a;drop", "9x"] {
            assert!(
                matches!(
                    ReadModel::new(schema.clone(), [bad]),
                    Err(PgError::InvalidTableName { .. })
                ),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn a_next_version_needs_another_schema_and_the_same_tables() {
        let live = model("app", &["a", "b"]);
        assert!(
            live.can_be_replaced_by(&model("app_next", &["b", "a"]))
                .is_ok()
        );
        assert!(live.can_be_replaced_by(&model("app", &["a", "b"])).is_err());
        assert!(live.can_be_replaced_by(&model("app_next", &["a"])).is_err());
        assert!(
            model("app", &[])
                .can_be_replaced_by(&model("x", &[]))
                .is_err()
        );
        assert_eq!(
            live.qualified_list(),
            "\"app\".\"a\", \"app\".\"b\"".to_owned()
        );
    }
}
