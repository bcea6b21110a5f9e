//! Controllers that reconcile `ApplicationInstance` and `Operation` objects
//! into objects that proven third-party controllers understand.
