//! Hand-written schema pieces the derive cannot express.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form object kept verbatim by the API server (Helm values, engine
/// parameters and outputs), as upstream declares it.
pub(crate) fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `metav1.Condition` list, a list-map keyed by `type`, with the same
/// constraints upstream's controller-gen output carries.
pub(crate) fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "lastTransitionTime is the last time the condition transitioned from one status to another.",
                    "type": "string",
                    "format": "date-time",
                },
                "message": {
                    "description": "message is a human readable message indicating details about the transition. This may be an empty string.",
                    "type": "string",
                    "maxLength": 32768,
                },
                "observedGeneration": {
                    "description": "observedGeneration represents the .metadata.generation that the condition was set based upon.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                },
                "reason": {
                    "description": "reason contains a programmatic identifier indicating the reason for the condition's last transition (CamelCase, from the closed list in vworkspace_crds::conditions).",
                    "type": "string",
                    "maxLength": 1024,
                    "minLength": 1,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                },
                "status": {
                    "description": "status of the condition, one of True, False, Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                },
                "type": {
                    "description": "type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                },
            },
        },
    })
}

/// Implements `Serialize`/`Deserialize` for a spec declared with
/// `#[serde(remote = "Self")]`, so a missing or null `spec` reads as the
/// default spec. Upstream does not require `spec`, and a typed watch must not
/// fail on such an object; the agent reports it as an invalid spec instead.
macro_rules! optional_spec_serde {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct OptionalSpec;
                impl<'de> serde::de::Visitor<'de> for OptionalSpec {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a spec object or null")
                    }
                    fn visit_none<E>(self) -> Result<$t, E> {
                        Ok(<$t>::default())
                    }
                    fn visit_unit<E>(self) -> Result<$t, E> {
                        Ok(<$t>::default())
                    }
                    fn visit_some<D2: serde::Deserializer<'de>>(
                        self,
                        d: D2,
                    ) -> Result<$t, D2::Error> {
                        <$t>::deserialize(d)
                    }
                }
                d.deserialize_option(OptionalSpec)
            }
        }
    };
}
pub(crate) use optional_spec_serde;
