"""Who people are: accounts, sign-in, sessions, tokens, second factors, single sign-on, users
and roles."""
