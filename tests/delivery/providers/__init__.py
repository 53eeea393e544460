"""Local stand-ins for the providers' HTTP APIs: real HTTP servers on 127.0.0.1 speaking each
provider's request and response shapes (and its errors), recording what they received, and
scriptable per test. `base.ProviderServer` is the shared machinery."""
