//! Names chosen by an attacker try to forge what an operator sees in a terminal, a chat channel or
//! an alert receiver.
