//! What sluice knows about Postgres's built-in types: their names and how their text is typed.
//!
//! A Relation message gives each column's type only as an OID. Built-in types have OIDs fixed in
//! the catalog (`pg_type.dat`), identical on every server, so they are a table here; any other
//! type (enums, domains, extension types such as `citext`) gets a server-assigned OID, is
//! announced by a Type message, and is the caller's to name.

/// How a column's text output becomes a typed value (see [`super::parse_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    /// Integers that fit in an i64: int2, int4, int8, oid, xid, cid, xid8.
    Int,
    /// float4, float8.
    Float,
    /// numeric: kept as decimal text, because no binary type holds it exactly.
    Numeric,
    /// text, varchar, bpchar, char, name, xml.
    Text,
    Bytea,
    Timestamp,
    Timestamptz,
    Date,
    Time,
    Timetz,
    Interval,
    Uuid,
    /// json and jsonb.
    Json,
    /// An array of `element`; `delimiter` separates elements in the text form (`typdelim` of
    /// the element type: `;` for box, `,` for everything else built in).
    Array {
        element: Box<TypeKind>,
        delimiter: char,
    },
    /// Everything else (inet, money, geometric types, …): travels as its text.
    Unknown,
}

/// Name (as in `pg_type.typname`, `_int4` for `int4[]`) and kind of a built-in type, or `None`
/// for a type sluice does not know by OID.
///
/// The OIDs were checked against the `pg_type` catalog of PostgreSQL 15 (see the test below).
pub fn builtin(oid: u32) -> Option<(&'static str, TypeKind)> {
    if let Some(scalar) = scalar(oid) {
        return Some(scalar);
    }
    let (name, element_oid) = array(oid)?;
    let (_, element) = scalar(element_oid)?;
    let delimiter = if element_oid == BOX_OID { ';' } else { ',' };
    Some((
        name,
        TypeKind::Array {
            element: Box::new(element),
            delimiter,
        },
    ))
}

/// The one built-in type whose array delimiter is not a comma: a box's text contains commas.
const BOX_OID: u32 = 603;

fn scalar(oid: u32) -> Option<(&'static str, TypeKind)> {
    use TypeKind::*;
    let (name, kind) = match oid {
        16 => ("bool", Bool),
        17 => ("bytea", Bytea),
        18 => ("char", Text),
        19 => ("name", Text),
        20 => ("int8", Int),
        21 => ("int2", Int),
        23 => ("int4", Int),
        25 => ("text", Text),
        26 => ("oid", Int),
        28 => ("xid", Int),
        29 => ("cid", Int),
        114 => ("json", Json),
        142 => ("xml", Text),
        600 => ("point", Unknown),
        601 => ("lseg", Unknown),
        602 => ("path", Unknown),
        603 => ("box", Unknown),
        604 => ("polygon", Unknown),
        628 => ("line", Unknown),
        650 => ("cidr", Unknown),
        700 => ("float4", Float),
        701 => ("float8", Float),
        718 => ("circle", Unknown),
        774 => ("macaddr8", Unknown),
        790 => ("money", Unknown),
        829 => ("macaddr", Unknown),
        869 => ("inet", Unknown),
        1042 => ("bpchar", Text),
        1043 => ("varchar", Text),
        1082 => ("date", Date),
        1083 => ("time", Time),
        1114 => ("timestamp", Timestamp),
        1184 => ("timestamptz", Timestamptz),
        1186 => ("interval", Interval),
        1266 => ("timetz", Timetz),
        1560 => ("bit", Unknown),
        1562 => ("varbit", Unknown),
        1700 => ("numeric", Numeric),
        2950 => ("uuid", Uuid),
        3220 => ("pg_lsn", Unknown),
        3614 => ("tsvector", Unknown),
        3615 => ("tsquery", Unknown),
        3802 => ("jsonb", Json),
        4072 => ("jsonpath", Unknown),
        5069 => ("xid8", Int),
        _ => return None,
    };
    Some((name, kind))
}

/// Array type OID → (array type name, element type OID).
fn array(oid: u32) -> Option<(&'static str, u32)> {
    Some(match oid {
        1000 => ("_bool", 16),
        1001 => ("_bytea", 17),
        1002 => ("_char", 18),
        1003 => ("_name", 19),
        1016 => ("_int8", 20),
        1005 => ("_int2", 21),
        1007 => ("_int4", 23),
        1009 => ("_text", 25),
        1028 => ("_oid", 26),
        1011 => ("_xid", 28),
        1012 => ("_cid", 29),
        199 => ("_json", 114),
        143 => ("_xml", 142),
        1017 => ("_point", 600),
        1018 => ("_lseg", 601),
        1019 => ("_path", 602),
        1020 => ("_box", 603),
        1027 => ("_polygon", 604),
        629 => ("_line", 628),
        651 => ("_cidr", 650),
        1021 => ("_float4", 700),
        1022 => ("_float8", 701),
        719 => ("_circle", 718),
        775 => ("_macaddr8", 774),
        791 => ("_money", 790),
        1040 => ("_macaddr", 829),
        1041 => ("_inet", 869),
        1014 => ("_bpchar", 1042),
        1015 => ("_varchar", 1043),
        1182 => ("_date", 1082),
        1183 => ("_time", 1083),
        1115 => ("_timestamp", 1114),
        1185 => ("_timestamptz", 1184),
        1187 => ("_interval", 1186),
        1270 => ("_timetz", 1266),
        1561 => ("_bit", 1560),
        1563 => ("_varbit", 1562),
        1231 => ("_numeric", 1700),
        2951 => ("_uuid", 2950),
        3221 => ("_pg_lsn", 3220),
        3643 => ("_tsvector", 3614),
        3645 => ("_tsquery", 3615),
        3807 => ("_jsonb", 3802),
        4073 => ("_jsonpath", 4072),
        271 => ("_xid8", 5069),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `select t.oid, t.typname, t.typdelim, a.oid, a.typname from pg_type t join pg_type a
    /// on a.oid = t.typarray where t.typname in (…)` on PostgreSQL 15.20.
    const CATALOG: &str = "\
        16|bool|,|1000|_bool
        17|bytea|,|1001|_bytea
        18|char|,|1002|_char
        19|name|,|1003|_name
        20|int8|,|1016|_int8
        21|int2|,|1005|_int2
        23|int4|,|1007|_int4
        25|text|,|1009|_text
        26|oid|,|1028|_oid
        28|xid|,|1011|_xid
        29|cid|,|1012|_cid
        114|json|,|199|_json
        142|xml|,|143|_xml
        600|point|,|1017|_point
        601|lseg|,|1018|_lseg
        602|path|,|1019|_path
        603|box|;|1020|_box
        604|polygon|,|1027|_polygon
        628|line|,|629|_line
        650|cidr|,|651|_cidr
        700|float4|,|1021|_float4
        701|float8|,|1022|_float8
        718|circle|,|719|_circle
        774|macaddr8|,|775|_macaddr8
        790|money|,|791|_money
        829|macaddr|,|1040|_macaddr
        869|inet|,|1041|_inet
        1042|bpchar|,|1014|_bpchar
        1043|varchar|,|1015|_varchar
        1082|date|,|1182|_date
        1083|time|,|1183|_time
        1114|timestamp|,|1115|_timestamp
        1184|timestamptz|,|1185|_timestamptz
        1186|interval|,|1187|_interval
        1266|timetz|,|1270|_timetz
        1560|bit|,|1561|_bit
        1562|varbit|,|1563|_varbit
        1700|numeric|,|1231|_numeric
        2950|uuid|,|2951|_uuid
        3220|pg_lsn|,|3221|_pg_lsn
        3614|tsvector|,|3643|_tsvector
        3615|tsquery|,|3645|_tsquery
        3802|jsonb|,|3807|_jsonb
        4072|jsonpath|,|4073|_jsonpath
        5069|xid8|,|271|_xid8";

    #[test]
    fn matches_the_postgres_15_catalog_exactly() {
        let mut known = 0;
        for row in CATALOG.lines() {
            let fields: Vec<&str> = row.trim().split('|').collect();
            let [oid, name, delimiter, array_oid, array_name] = fields[..] else {
                panic!("bad row {row}");
            };
            let (oid, array_oid): (u32, u32) = (oid.parse().unwrap(), array_oid.parse().unwrap());
            let (found_name, element) = builtin(oid).unwrap();
            assert_eq!(found_name, name);
            let (found_array_name, array_kind) = builtin(array_oid).unwrap();
            assert_eq!(found_array_name, array_name);
            assert_eq!(
                array_kind,
                TypeKind::Array {
                    element: Box::new(element),
                    delimiter: delimiter.chars().next().unwrap(),
                }
            );
            known += 2;
        }
        // Nothing is known that the catalog excerpt does not vouch for.
        assert_eq!((0..10_000).filter_map(builtin).count(), known);
    }

    #[test]
    fn kinds_follow_the_wire_contract() {
        let kind = |oid| builtin(oid).unwrap().1;
        for oid in [20, 21, 23, 26, 28] {
            assert_eq!(kind(oid), TypeKind::Int, "oid {oid}");
        }
        for oid in [18, 19, 25, 142, 1042, 1043] {
            assert_eq!(kind(oid), TypeKind::Text, "oid {oid}");
        }
        for oid in [650, 790, 829, 869, 1560, 3220, 3614] {
            assert_eq!(kind(oid), TypeKind::Unknown, "oid {oid}");
        }
        assert_eq!(kind(114), TypeKind::Json);
        assert_eq!(kind(3802), TypeKind::Json);
        assert_eq!(
            builtin(1007),
            Some((
                "_int4",
                TypeKind::Array {
                    element: Box::new(TypeKind::Int),
                    delimiter: ','
                }
            ))
        );
        assert_eq!(builtin(16_385), None);
        assert_eq!(builtin(0), None);
    }
}
