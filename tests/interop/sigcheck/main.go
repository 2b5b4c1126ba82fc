// sigcheck: an independent implementation, on Go's crypto and golang.org/x/crypto, of the
// encrypted sigstore key format and of ECDSA P-256 simple-signing signatures, for interop tests.
//
//	sigcheck keygen PREFIX PASSWORD           write PREFIX.key (encrypted) and PREFIX.pub
//	sigcheck public KEY PASSWORD              decrypt KEY, print its public key as PEM
//	sigcheck sign KEY PASSWORD PAYLOAD        print the base64 signature of the file PAYLOAD
//	sigcheck verify PUB PAYLOAD SIGNATURE     exit 0 if SIGNATURE (base64) signs PAYLOAD
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/scrypt"
)

type sealed struct {
	KDF struct {
		Name   string `json:"name"`
		Params struct {
			N int `json:"N"`
			R int `json:"r"`
			P int `json:"p"`
		} `json:"params"`
		Salt []byte `json:"salt"`
	} `json:"kdf"`
	Cipher struct {
		Name  string `json:"name"`
		Nonce []byte `json:"nonce"`
	} `json:"cipher"`
	Ciphertext []byte `json:"ciphertext"`
}

func boxKey(password []byte, s *sealed) (*[32]byte, error) {
	derived, err := scrypt.Key(password, s.KDF.Salt, s.KDF.Params.N, s.KDF.Params.R, s.KDF.Params.P, 32)
	if err != nil {
		return nil, err
	}
	var key [32]byte
	copy(key[:], derived)
	return &key, nil
}

func loadPrivate(path, password string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || (block.Type != "ENCRYPTED COSIGN PRIVATE KEY" && block.Type != "ENCRYPTED SIGSTORE PRIVATE KEY") {
		return nil, errors.New("no encrypted sigstore key")
	}
	var s sealed
	if err := json.Unmarshal(block.Bytes, &s); err != nil {
		return nil, err
	}
	if s.KDF.Name != "scrypt" || s.Cipher.Name != "nacl/secretbox" || len(s.Cipher.Nonce) != 24 {
		return nil, errors.New("unexpected kdf or cipher")
	}
	key, err := boxKey([]byte(password), &s)
	if err != nil {
		return nil, err
	}
	var nonce [24]byte
	copy(nonce[:], s.Cipher.Nonce)
	der, ok := secretbox.Open(nil, s.Ciphertext, &nonce, key)
	if !ok {
		return nil, errors.New("decryption failed")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	private, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an ECDSA key")
	}
	return private, nil
}

func publicPEM(public *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(public)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

func keygen(prefix, password string) error {
	private, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(private)
	if err != nil {
		return err
	}
	var s sealed
	s.KDF.Name, s.Cipher.Name = "scrypt", "nacl/secretbox"
	s.KDF.Params.N, s.KDF.Params.R, s.KDF.Params.P = 65536, 8, 1
	s.KDF.Salt, s.Cipher.Nonce = make([]byte, 32), make([]byte, 24)
	if _, err := rand.Read(s.KDF.Salt); err != nil {
		return err
	}
	if _, err := rand.Read(s.Cipher.Nonce); err != nil {
		return err
	}
	key, err := boxKey([]byte(password), &s)
	if err != nil {
		return err
	}
	var nonce [24]byte
	copy(nonce[:], s.Cipher.Nonce)
	s.Ciphertext = secretbox.Seal(nil, der, &nonce, key)
	body, err := json.Marshal(&s)
	if err != nil {
		return err
	}
	if err := os.WriteFile(prefix+".key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: body}), 0o600); err != nil {
		return err
	}
	public, err := publicPEM(&private.PublicKey)
	if err != nil {
		return err
	}
	return os.WriteFile(prefix+".pub", public, 0o644)
}

func run(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: sigcheck keygen|public|sign|verify ...")
	}
	switch {
	case args[0] == "keygen" && len(args) == 3:
		return keygen(args[1], args[2])
	case args[0] == "public" && len(args) == 3:
		private, err := loadPrivate(args[1], args[2])
		if err != nil {
			return err
		}
		public, err := publicPEM(&private.PublicKey)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(public)
		return err
	case args[0] == "sign" && len(args) == 4:
		private, err := loadPrivate(args[1], args[2])
		if err != nil {
			return err
		}
		payload, err := os.ReadFile(args[3])
		if err != nil {
			return err
		}
		digest := sha256.Sum256(payload)
		signature, err := ecdsa.SignASN1(rand.Reader, private, digest[:])
		if err != nil {
			return err
		}
		fmt.Println(base64.StdEncoding.EncodeToString(signature))
		return nil
	case args[0] == "verify" && len(args) == 4:
		data, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		block, _ := pem.Decode(data)
		if block == nil {
			return errors.New("no PEM public key")
		}
		parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return err
		}
		public, ok := parsed.(*ecdsa.PublicKey)
		if !ok {
			return errors.New("not an ECDSA public key")
		}
		payload, err := os.ReadFile(args[2])
		if err != nil {
			return err
		}
		signature, err := base64.StdEncoding.DecodeString(args[3])
		if err != nil {
			return err
		}
		digest := sha256.Sum256(payload)
		if !ecdsa.VerifyASN1(public, digest[:], signature) {
			return errors.New("signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("bad arguments %q", args)
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sigcheck:", err)
		os.Exit(1)
	}
}
